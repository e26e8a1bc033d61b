"""Probes: fitting on synthetic data, calibration, metrics, save/load and its errors, harvesting."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from alignlab import AlignlabError
from alignlab.models.tiny import build_tokenizer
from alignlab.probes import (
    LinearProbe,
    accuracy_at_threshold,
    auroc,
    fit_diff_of_means,
    fit_logistic,
    harvest,
    layer_sweep,
    load_harvest,
    plot_layer_sweep,
    probe_report,
    random_direction_control,
    recall_at_fpr,
    threshold_at_fpr,
)

D = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _separable(n=600, d=64, shift=5.0, seed=0, anisotropic=True):
    """Gaussian features (per-feature scales 0.5-3 if anisotropic); positives are moved `shift` along one
    fixed random unit direction."""
    fixed = np.random.default_rng(123)  # the same direction and feature scales for every seed
    u = fixed.standard_normal(d)
    u /= np.linalg.norm(u)
    scales = fixed.uniform(0.5, 3.0, d) if anisotropic else np.ones(d)
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    X = rng.standard_normal((n, d)) * scales + y[:, None] * shift * u
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    X, y = _separable(seed=0)
    X_test, y_test = _separable(seed=1)
    return X, y, X_test, y_test


@pytest.fixture(scope="module")
def probe(data):
    X, y, _, _ = data
    return fit_logistic(X, y, C=1.0, metadata={"model": "tiny", "layer": 1, "aggregation": "mean",
                                               "position": "completion", "data": "synthetic"})


def test_logistic_probe_separates_and_beats_random_directions(data, probe):
    _, _, X_test, y_test = data
    assert auroc(probe.score(X_test), y_test) > 0.95
    control = random_direction_control(X_test, y_test, probe, n=50, seed=0)
    assert abs(control["mean"] - 0.5) < 0.06 and control["std"] < 0.2 and control["n"] == 50
    assert probe.metadata["d_model"] == 64 and probe.metadata["method"] == "logistic"


def test_diff_of_means_probe():
    # isotropic noise, where the difference of means is the optimal direction
    X, y = _separable(seed=0, anisotropic=False)
    X_test, y_test = _separable(seed=1, anisotropic=False)
    dom = fit_diff_of_means(X, y, metadata={"layer": 0})
    assert auroc(dom.score(X_test), y_test) > 0.95
    assert np.isclose(np.linalg.norm(dom.direction), 1.0, atol=1e-6)
    midpoint = (X[y].mean(0) + X[~y].mean(0)) / 2
    assert abs(float(dom.score(midpoint))) < 1e-4


def test_torch_score_matches_numpy_and_is_differentiable(data, probe):
    X = data[0][:10]
    np.testing.assert_allclose(probe.score(torch.from_numpy(X)).numpy(), probe.score(X), rtol=1e-5, atol=1e-5)
    Xt = torch.from_numpy(X).double().requires_grad_(True)
    probe.score(Xt).sum().backward()
    expected = probe.direction.astype(np.float64) / probe.scale.astype(np.float64)
    np.testing.assert_allclose(Xt.grad.numpy(), np.broadcast_to(expected, X.shape), rtol=1e-6)
    with pytest.raises(AlignlabError, match="d_model=64"):
        probe.score(torch.zeros(3, 65))


def test_threshold_at_fpr_exact_counts():
    scores = np.random.default_rng(0).permutation(1000).astype(float)
    for fpr, allowed in ((0.01, 10), (0.05, 50), (0.0, 0), (0.123, 123)):
        t = threshold_at_fpr(scores, fpr)
        assert (scores > t).sum() == allowed
    assert (np.arange(50) > threshold_at_fpr(np.arange(50), 0.01)).sum() == 0  # 0.5 of a sample rounds down
    with pytest.raises(AlignlabError, match="fpr must be"):
        threshold_at_fpr(scores, 1.0)


def test_calibrated_threshold_gives_about_one_percent_fpr(probe):
    X_neg, fresh = (X[~y] for X, y in (_separable(n=6000, seed=7), _separable(n=10000, seed=8)))
    p = LinearProbe(probe.direction, probe.bias, probe.mean, probe.scale, metadata=dict(probe.metadata))
    t = p.calibrate_threshold(X_neg, fpr=0.01)
    assert t == p.threshold
    assert (p.score(X_neg) > t).sum() == int(0.01 * len(X_neg))  # exactly floor(1%) of the negatives
    assert 0.005 < p.predict(fresh).mean() < 0.02  # generalises to unseen negatives
    assert p.metadata["calibration"] == {"fpr": 0.01, "n_negatives": len(X_neg)}


def test_metrics_against_manual_computation():
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.3
    s = rng.standard_normal(400) + 1.2 * y
    pairs = [(a, b) for a in s[y] for b in s[~y]]
    assert auroc(s, y) == pytest.approx(np.mean([a > b for a, b in pairs]))
    t = np.sort(s[~y])[int(np.ceil(0.95 * (~y).sum())) - 1]
    assert recall_at_fpr(s, y, fpr=0.05) == pytest.approx((s[y] > t).mean())
    assert accuracy_at_threshold(s, y, 0.5) == pytest.approx(((s > 0.5) == y).mean())
    with pytest.raises(AlignlabError, match="both classes"):
        auroc(s, np.zeros(400))
    with pytest.raises(AlignlabError, match="got 3 labels for 400"):
        auroc(s, [0, 1, 1])


def test_probe_report(data, probe):
    _, _, X_test, y_test = data
    report = probe_report(probe, X_test, y_test, fpr=0.01, n_random=5)
    assert report["n"] == 600 and report["n_pos"] + report["n_neg"] == 600
    assert report["auroc"] > 0.95 and report["recall_at_fpr"] > 0.5
    assert abs(report["random_auroc_mean"] - 0.5) < 0.15
    expected = accuracy_at_threshold(probe.score(X_test), y_test, 0.0)
    assert report["accuracy_at_threshold"] == pytest.approx(expected)
    json.dumps(report)


@pytest.mark.parametrize("target", ["dir", "file.safetensors"])
def test_save_load_round_trip(tmp_path, data, probe, target):
    p = LinearProbe(probe.direction, probe.bias, probe.mean, probe.scale, metadata=dict(probe.metadata))
    p.calibrate_threshold(data[0][~data[1]], fpr=0.05)
    path = tmp_path / target
    p.save(path)
    q = LinearProbe.load(path)
    for name in ("direction", "mean", "scale"):
        assert np.array_equal(getattr(q, name), getattr(p, name))
    assert (q.bias, q.threshold, q.metadata) == (p.bias, p.threshold, p.metadata)
    assert np.array_equal(q.score(data[2]), p.score(data[2]))
    files = sorted(f.name for f in (path if target == "dir" else tmp_path).iterdir())
    stem = "probe" if target == "dir" else "file"
    assert files == [f"{stem}.json", f"{stem}.safetensors"]


def test_load_errors(tmp_path, probe):
    with pytest.raises(AlignlabError, match=r"probe metadata .* does not exist"):
        LinearProbe.load(tmp_path / "nothing")
    probe.save(tmp_path / "p")
    tensors, meta = tmp_path / "p" / "probe.safetensors", tmp_path / "p" / "probe.json"
    good_tensors, good_meta = tensors.read_bytes(), meta.read_text()

    tensors.write_bytes(good_tensors[: len(good_tensors) // 2])
    with pytest.raises(AlignlabError, match=r"probe tensors .* are corrupt"):
        LinearProbe.load(tmp_path / "p")
    tensors.write_bytes(b"\x00" * 7)
    with pytest.raises(AlignlabError, match="are corrupt"):
        LinearProbe.load(tmp_path / "p")
    tensors.unlink()
    with pytest.raises(AlignlabError, match=r"probe tensors .* do not exist"):
        LinearProbe.load(tmp_path / "p")

    tensors.write_bytes(good_tensors)
    meta.write_text(good_meta[:-20])
    with pytest.raises(AlignlabError, match="is not valid JSON"):
        LinearProbe.load(tmp_path / "p")
    meta.write_text(good_meta.replace('"d_model": 64', '"d_model": 16', 1))
    with pytest.raises(AlignlabError, match=r"direction .* has shape \(64,\), expected \(16,\)"):
        LinearProbe.load(tmp_path / "p")
    meta.write_text(good_meta)
    save_file({"direction": np.zeros(64, np.float32), "mean": np.zeros(64, np.float32)}, tensors)
    with pytest.raises(AlignlabError, match="lack 'scale'"):
        LinearProbe.load(tmp_path / "p")


def test_check_compatible(probe):
    probe.check_compatible(64, layer=1, n_layers=4)
    probe.check_compatible(64, layer=-1, n_layers=2)  # -1 of 2 layers is layer 1
    probe.check_compatible(64)
    with pytest.raises(AlignlabError, match="d_model mismatch: probe has 64, model 32"):
        probe.check_compatible(32, layer=1)
    with pytest.raises(AlignlabError, match="layer mismatch: probe was trained on layer 1, not 2"):
        probe.check_compatible(64, layer=2, n_layers=4)
    with pytest.raises(AlignlabError, match="layer mismatch: its layer 1 is out of range for 1 layers"):
        probe.check_compatible(64, n_layers=1)
    with pytest.raises(AlignlabError, match="layer mismatch: layer 7 is out of range for 4 layers"):
        probe.check_compatible(64, layer=7, n_layers=4)


def test_layer_sweep_and_plot(tmp_path):
    X, y = _separable(n=300, seed=4, anisotropic=False)
    noise = np.random.default_rng(5).standard_normal(X.shape).astype(np.float32)
    result = layer_sweep({0: noise, 3: torch.from_numpy(X)}, y, split=0.4, n_random=5)
    assert result["layers"] == [0, 3] and result["best_layer"] == 3
    assert result["n_train"] + result["n_test"] == 300 and result["n_test"] == 120
    assert result["auroc"][1] > 0.95 and result["auroc_diff_of_means"][1] > 0.95
    assert abs(result["auroc"][0] - 0.5) < 0.15
    json.dumps(result)
    explicit = layer_sweep({3: X}, y, split=(range(200), range(200, 300)), n_random=2)
    assert explicit["n_train"] == 200 and explicit["n_test"] == 100
    png = tmp_path / "plots" / "sweep.png"
    plot_layer_sweep(result, png, title="synthetic")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.name for f in png.parent.iterdir()] == ["sweep.png"]


# --- harvesting ------------------------------------------------------------------------------------------

PAIRS = [
    ("the cat", " sat on the mat"),
    ("def f(x):", " return x + 1"),
    ("hello", " world"),
    ("the cat sat on", " the mat and then the dog sat too"),
    ("x", " y"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([p + c for p, c in PAIRS] * 3, vocab_size=300)


def _model(kind, tok):
    torch.manual_seed(0)
    special = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    if kind == "gpt2":  # absolute positions: features are only batch-independent with padding-aware positions
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=D, n_layer=3, n_head=4, n_positions=64,
                                          **special)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=D, intermediate_size=64,
                                        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                                        **special)).eval()


def _manual_features(model, tok, position, how, layer):
    """One unpadded sequence at a time, read from HF's hidden_states (index layer + 1; layer < last)."""
    rows = []
    for prompt, completion in PAIRS:
        p = tok(prompt)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"] if position == "completion" else []
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([p + c]), output_hidden_states=True).hidden_states[layer + 1][0]
        sel = hs[len(p):] if position == "completion" else hs[len(p) - 1 : len(p)]
        rows.append({"mean": sel.mean(0), "max": sel.max(0).values, "last": sel[-1]}[how])
    return torch.stack(rows)


@pytest.mark.parametrize(("kind", "position", "how"), [
    ("llama", "completion", "mean"), ("llama", "completion", "max"), ("llama", "completion", "last"),
    ("llama", "prompt_last", "mean"), ("gpt2", "completion", "mean"), ("gpt2", "prompt_last", "last"),
])
def test_harvest_matches_unbatched_forward(tokenizer, kind, position, how, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_QUIET", "1")
    model = _model(kind, tokenizer)
    feats = harvest(model, tokenizer, PAIRS, layers=[0, -2], position=position, aggregation=how, batch_size=2)
    assert set(feats) == {0, 1} and feats[0].shape == (len(PAIRS), D) and feats[0].dtype == torch.float32
    for layer in (0, 1):
        torch.testing.assert_close(feats[layer], _manual_features(model, tokenizer, position, how, layer),
                                   rtol=1e-5, atol=1e-5)


def test_harvest_to_disk_shards_and_errors(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_QUIET", "1")
    model = _model("llama", tokenizer)
    in_memory = harvest(model, tokenizer, PAIRS, layers=[1, 2], batch_size=3)
    out = tmp_path / "h"
    assert harvest(model, tokenizer, iter(PAIRS), layers=[1, -1], batch_size=3, out_dir=out, shard_size=2,
                   metadata={"labels": "none"}) is None
    feats, index = load_harvest(out)
    assert [s["n"] for s in index["shards"]] == [2, 2, 1]
    assert (index["n"], index["d_model"], index["layers"]) == (5, D, [1, 2])
    assert index["position"] == "completion" and index["metadata"] == {"labels": "none"}
    for layer in (1, 2):
        torch.testing.assert_close(feats[layer], in_memory[layer], rtol=0, atol=0)
    assert not [f for f in tmp_path.iterdir() if f.name != "h"]  # the temp directory was renamed away

    with pytest.raises(AlignlabError, match="already exists"):
        harvest(model, tokenizer, PAIRS, layers=[1], out_dir=out)
    shard = out / "shard-00001.safetensors"
    good = shard.read_bytes()
    shard.write_bytes(good[:40])
    with pytest.raises(AlignlabError, match=r"shard-00001\.safetensors is corrupt"):
        load_harvest(out)
    shard.unlink()
    with pytest.raises(AlignlabError, match=r"shard-00001\.safetensors does not exist"):
        load_harvest(out)
    shard.write_bytes(good)
    index["shards"][1]["n"] = 3
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(AlignlabError, match=r"layer 1 has shape \(2, 32\), expected \(3, 32\)"):
        load_harvest(out)
    with pytest.raises(AlignlabError, match=r"harvest index .* does not exist"):
        load_harvest(tmp_path / "missing")


def test_harvest_input_errors(tokenizer):
    model = _model("llama", tokenizer)
    with pytest.raises(AlignlabError, match="encodes to zero tokens"):
        harvest(model, tokenizer, [("the cat", "")], layers=[0])
    with pytest.raises(AlignlabError, match="unknown position"):
        harvest(model, tokenizer, PAIRS, layers=[0], position="middle")
    with pytest.raises(AlignlabError, match="layer 3 is out of range"):
        harvest(model, tokenizer, PAIRS, layers=[3])
    with pytest.raises(AlignlabError, match="at least one"):
        harvest(model, tokenizer, [], layers=[0])
    assert not model.training


def test_token_scores_average_to_the_pooled_score(tokenizer):
    from alignlab.probes.tokens import token_scores

    model = _model("llama", tokenizer)
    rng = np.random.default_rng(0)
    probe = LinearProbe(direction=rng.normal(size=D), bias=0.3, mean=rng.normal(size=D), scale=np.ones(D),
                        metadata={"layer": 1})
    pairs = [*PAIRS, (PAIRS[0][0], "")]
    scored = token_scores(model, tokenizer, probe, pairs, batch_size=2)  # batches mix lengths: padding on the left
    assert scored[-1] == []  # an empty completion has no tokens
    pooled = probe.score(harvest(model, tokenizer, PAIRS, layers=[1], aggregation="mean")[1].numpy())
    for (_, completion), toks, whole in zip(PAIRS, scored, pooled, strict=False):
        assert "".join(t for t, _ in toks) == completion
        assert np.mean([s for _, s in toks]) == pytest.approx(float(whole), abs=1e-4)
    last = probe.score(harvest(model, tokenizer, PAIRS, layers=[1], aggregation="last")[1].numpy())
    assert [toks[-1][1] for toks in scored[:-1]] == pytest.approx(last.tolist(), abs=1e-4)
