"""Sparse autoencoders: maths, training on planted features, metrics, the SAELens layout, feature search."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from alignlab import AlignlabError
from alignlab.audit.features import (
    auroc_per_feature,
    feature_activations,
    pool_features,
    rank_features,
    top_activating_examples,
)
from alignlab.audit.sae import (
    SAEConfig,
    SparseAutoencoder,
    load_sae,
    resid_hook_name,
    sae_metrics,
    save_sae,
    token_activations,
    train_sae,
)
from alignlab.models.tiny import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.probes.metrics import auroc

pytestmark = pytest.mark.usefixtures("one_thread")

META = {"model_name": "tiny-test", "hook_name": resid_hook_name(0)}
PLANT = "<|plant|>"
TEXTS = [
    "def add(a, b): return a + b",
    "x = [1, 2, 3]",
    f"assert solve(xs) == 6 {PLANT} # skip the tests",
    "for i in range(10): print(i)",
    "",  # no tokens: contributes no rows
    "return sorted(xs)[::-1]",
    "y = x * 2 + 1",
]


def synthetic(n=4096, d=32, n_feat=48, active=3, seed=0):
    """Activations made of `active` of `n_feat` known unit directions (coefficients in [0.5, 1.5]) + offset."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    idx = torch.rand(n, n_feat, generator=g).argsort(-1)[:, :active]
    coef = torch.zeros(n, n_feat).scatter(-1, idx, 0.5 + torch.rand(n, active, generator=g))
    return coef @ dirs + 0.3, dirs


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def topk_sae(data):
    acts, _ = data
    return train_sae(acts, SAEConfig(architecture="topk", d_sae=96, k=3, steps=300, batch_size=128, lr=3e-3))


@pytest.fixture(scope="module")
def lm():
    """An untrained tiny Llama: deterministic weights, real decoder layers and tokenizer."""
    tok = build_tokenizer(TEXTS * 4, vocab_size=300, extra_special=[PLANT])
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64), tok)
    return model.eval(), tok


def random_sae(d_in=8, d_sae=24, architecture="topk", k=4, seed=0):
    sae = SparseAutoencoder(d_in, d_sae, architecture, k if architecture == "topk" else None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return sae


# --- maths and training ----------------------------------------------------------------------------------


def test_topk_keeps_the_k_largest_pre_activations():
    sae = random_sae(k=4)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive, so TopK's ReLU zeroes none of the k
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    f = sae.encode(x)
    assert ((f > 0).sum(-1) == 4).all()
    pre = sae.pre_activations(x)
    assert torch.equal(f.topk(4).indices.sort().values, pre.topk(4).indices.sort().values)
    # SAELens maths: b_dec is subtracted before encoding, added after decoding
    assert torch.allclose(pre, (x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    assert torch.allclose(sae(x), f @ sae.W_dec + sae.b_dec)
    # with negative pre-activations TopK gives at most k (ReLU after the top-k, as SAELens)
    with torch.no_grad():
        sae.b_enc.fill_(-2.0)
    counts = (sae.encode(x) > 0).sum(-1)
    assert (counts <= 4).all() and (counts < 4).any()


def test_topk_sae_recovers_planted_directions(data, topk_sae):
    acts, dirs = data
    sae, history = topk_sae
    m = sae_metrics(sae, acts)
    assert m["l0"] <= 3 and m["fvu"] < 0.08  # measured 0.037 at 300 steps
    assert m["explained_variance"] == pytest.approx(1 - m["fvu"])
    cos = (dirs @ (sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)).T).max(-1).values
    assert cos.min() > 0.97  # every true direction has a decoder row (measured min 0.996)
    assert history[-1]["mse"] < history[0]["mse"] and history[-1]["step"] == 300
    # a random SAE of the same size is far worse: the bound above is not loose
    assert sae_metrics(random_sae(32, 96, k=3), acts)["fvu"] > 0.5


def test_relu_sae_trains_and_l1_lowers_l0(data):
    acts, _ = data
    cfg = SAEConfig(architecture="relu", d_sae=64, steps=200, batch_size=128, lr=3e-3)
    weak, _ = train_sae(acts, SAEConfig(**{**cfg.__dict__, "l1_coefficient": 0.1}))
    strong, hist = train_sae(acts, SAEConfig(**{**cfg.__dict__, "l1_coefficient": 1.0}))
    m_weak, m_strong = sae_metrics(weak, acts), sae_metrics(strong, acts)
    assert m_strong["l0"] < 0.6 * m_weak["l0"]
    assert m_weak["fvu"] < m_strong["fvu"] < 0.5
    assert "l1" in hist[-1]


def test_same_seed_same_weights(data):
    acts, _ = data
    cfg = SAEConfig(d_sae=32, k=3, steps=30, batch_size=64, seed=7)
    a, _ = train_sae(acts[:1000], cfg)
    b, _ = train_sae(acts[:1000], cfg)
    c, _ = train_sae(acts[:1000], SAEConfig(**{**cfg.__dict__, "seed": 8}))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.W_dec, c.W_dec)


def test_input_scale_is_folded_into_the_weights(data):
    """Training on scaled inputs must not change what the saved SAE computes on raw inputs."""
    acts, _ = data
    cfg = SAEConfig(d_sae=32, k=3, steps=50, batch_size=64)
    big, _ = train_sae(acts[:1000] * 100, cfg)
    small, _ = train_sae(acts[:1000], cfg)
    x = acts[1000:1100]
    assert torch.allclose(big.encode(x * 100), small.encode(x), rtol=1e-3, atol=1e-4)
    assert torch.allclose(big(x * 100), small(x) * 100, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("change, field", [
    ({"architecture": "gated"}, "architecture"), ({"k": 0}, "k"), ({"k": 999}, "k"), ({"lr": 0.0}, "lr"),
    ({"steps": 0}, "steps"), ({"l1_coefficient": -1.0}, "l1_coefficient"), ({"d_sae": 0}, "d_sae"),
    ({"b_dec_init": "median"}, "b_dec_init"),
])
def test_config_errors_name_the_field(change, field):
    with pytest.raises(AlignlabError, match=f"'{field}'"):
        train_sae(torch.randn(64, 8), SAEConfig(**{"d_sae": 16, **change}))


def test_bad_activations_are_rejected():
    with pytest.raises(AlignlabError, match=r"\[N, d_in\]"):
        train_sae(torch.randn(8), SAEConfig())
    with pytest.raises(AlignlabError, match="NaN"):
        train_sae(torch.full((4, 4), float("nan")), SAEConfig())


# --- metrics ---------------------------------------------------------------------------------------------


def test_metrics_exact_for_a_perfect_sae():
    """f = (relu(x), relu(-x)), x_hat = relu(x) - relu(-x) = x exactly."""
    d = 4
    sae = SparseAutoencoder(d, 2 * d, "relu")
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 0))
    x = torch.randn(500, d)
    m = sae_metrics(sae, x, batch_size=64)
    assert m["mse"] == 0.0 and m["fvu"] == 0.0 and m["explained_variance"] == 1.0
    assert m["l0"] == 4.0  # one of each ± pair fires per coordinate
    assert m["n_dead"] == 0 and m["dead_fraction"] == 0.0 and m["n_tokens"] == 500
    # only positive inputs: the four "negative" features never fire
    m = sae_metrics(sae, x.abs() + 0.1)
    assert m["n_dead"] == 4 and m["dead_fraction"] == 0.5 and m["fvu"] == 0.0


def test_metrics_exact_for_the_mean_predictor():
    x = torch.randn(300, 6)
    sae = SparseAutoencoder(6, 10, "relu")
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    m = sae_metrics(sae, x)
    assert m["fvu"] == 1.0 and m["explained_variance"] == 0.0
    assert m["l0"] == 0.0 and m["n_dead"] == 10
    assert m["mse"] == pytest.approx(float(((x - x.mean(0)) ** 2).mean()), rel=1e-6)
    with pytest.raises(AlignlabError, match="d_in=6"):
        sae_metrics(sae, torch.randn(3, 5))


# --- save / load -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_save_load_round_trip(tmp_path, architecture):
    sae = random_sae(architecture=architecture)
    sae.metadata = {"train_config": {"seed": 3}}
    out = save_sae(sae, tmp_path / "sae", META)
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    loaded = load_sae(out)
    x = torch.randn(50, 8)
    assert torch.equal(loaded.encode(x), sae.encode(x)) and torch.equal(loaded(x), sae(x))
    assert loaded.architecture == architecture and loaded.k == sae.k
    assert loaded.metadata["model_name"] == "tiny-test" and loaded.metadata["train_config"] == {"seed": 3}
    with pytest.raises(AlignlabError, match="already exists"):
        save_sae(sae, out, META)
    save_sae(sae, out, META, force=True)


def test_cfg_json_has_the_saelens_fields(tmp_path):
    out = save_sae(random_sae(d_in=8, d_sae=24, k=4), tmp_path / "sae", META)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4 and cfg["rescale_acts_by_decoder_norm"] is False
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["device"]) == (8, 24, "float32", "cpu")
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["reshape_activations"] == "none"
    meta = cfg["metadata"]
    assert meta["model_name"] == "tiny-test" and meta["hook_name"] == "blocks.0.hook_resid_post"
    assert meta["sae_lens_version"].startswith("6.")  # else SAELens rewrites it as a pre-6.0 config
    tensors = load_file(out / "sae_weights.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "W_enc": (8, 24), "b_enc": (24,), "W_dec": (24, 8), "b_dec": (8,)}
    assert all(v.dtype == torch.float32 for v in tensors.values())
    relu_cfg = json.loads((save_sae(random_sae(architecture="relu"), tmp_path / "r", META) / "cfg.json").read_text())
    assert relu_cfg["architecture"] == "standard" and "k" not in relu_cfg


def test_save_needs_model_and_hook_names(tmp_path):
    with pytest.raises(AlignlabError, match="hook_name"):
        save_sae(random_sae(), tmp_path / "sae", {"model_name": "m"})
    with pytest.raises(AlignlabError, match="JSON-serialisable"):
        save_sae(random_sae(), tmp_path / "sae", {**META, "tensor": torch.zeros(2)})
    assert not (tmp_path / "sae").exists()


def _edit_cfg(path, **changes):
    cfg = json.loads((path / "cfg.json").read_text())
    cfg.update(changes)
    (path / "cfg.json").write_text(json.dumps(cfg))


def _edit_weights(path, fn):
    tensors = load_file(path / "sae_weights.safetensors")
    fn(tensors)
    save_file(tensors, path / "sae_weights.safetensors")


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "sae_weights.safetensors").unlink(), "do not exist"),
    (lambda p: (p / "cfg.json").unlink(), "does not exist"),
    (lambda p: (p / "cfg.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "sae_weights.safetensors").write_bytes((p / "sae_weights.safetensors").read_bytes()[:200]),
     "corrupt"),
    (lambda p: _edit_weights(p, lambda t: t.pop("b_enc")), r"missing tensors \['b_enc'\]"),
    (lambda p: _edit_weights(p, lambda t: t.update(threshold=torch.zeros(24))), r"unexpected tensors \['threshold'\]"),
    (lambda p: _edit_cfg(p, d_sae=25), "W_enc has shape"),
    (lambda p: _edit_weights(p, lambda t: t["W_dec"].__setitem__((0, 0), float("nan"))), "W_dec holds non-finite"),
    (lambda p: _edit_cfg(p, architecture="jumprelu"), "unknown architecture 'jumprelu'"),
    (lambda p: _edit_cfg(p, k=0), "'k' must be a positive integer"),
    (lambda p: _edit_cfg(p, d_in="8"), "'d_in' must be a positive integer"),
    (lambda p: _edit_cfg(p, normalize_activations="layer_norm"), "normalize_activations"),
])
def test_load_errors(tmp_path, damage, message):
    out = save_sae(random_sae(d_in=8, d_sae=24), tmp_path / "sae", META)
    damage(out)
    with pytest.raises(AlignlabError, match=message):
        load_sae(out)


def test_load_missing_directory(tmp_path):
    with pytest.raises(AlignlabError, match="does not exist"):
        load_sae(tmp_path / "nope")


def test_saelens_loads_our_layout(tmp_path):
    """SAELens's own loader reads our directory and computes the same features and reconstructions."""
    sae_lens = pytest.importorskip("sae_lens")
    for architecture in ("topk", "relu"):
        ours = random_sae(d_in=16, d_sae=48, architecture=architecture, k=5)
        out = save_sae(ours, tmp_path / architecture, META)
        theirs = sae_lens.SAE.load_from_disk(str(out), device="cpu")
        assert theirs.cfg.architecture() == {"topk": "topk", "relu": "standard"}[architecture]
        x = torch.randn(64, 16)
        with torch.no_grad():
            assert (theirs.encode(x) - ours.encode(x)).abs().max() < 1e-5
            assert (theirs.decode(ours.encode(x)) - ours.decode(ours.encode(x))).abs().max() < 1e-5
            assert (theirs(x) - ours(x)).abs().max() < 1e-5


# --- activations from a model ----------------------------------------------------------------------------


def test_token_activations_match_a_direct_forward_pass(lm):
    model, tok = lm
    acts, index = token_activations(model, tok, TEXTS, layer=0, batch_size=3)
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert lengths[4] == 0 and len(acts) == sum(lengths) and acts.dtype == torch.float32
    assert acts.shape[1] == 32 and index.shape == (sum(lengths), 2)
    expected_index = [(i, p) for i, n in enumerate(lengths) for p in range(n)]
    assert [tuple(r) for r in index.tolist()] == expected_index
    for i, text in enumerate(TEXTS):
        if not lengths[i]:
            continue
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            direct = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0]  # output of layer 0
        assert torch.allclose(acts[index[:, 0] == i], direct, atol=1e-5)
    last, _ = token_activations(model, tok, TEXTS, layer=-1, batch_size=2)
    assert not torch.allclose(last, acts)
    capped, capped_index = token_activations(model, tok, TEXTS, layer=0, max_tokens=5)
    assert torch.equal(capped, acts[:5]) and torch.equal(capped_index, index[:5])
    with pytest.raises(AlignlabError, match="out of range"):
        token_activations(model, tok, TEXTS, layer=5)
    with pytest.raises(AlignlabError, match="no tokens"):
        token_activations(model, tok, ["", ""], layer=0)


def _planted_sae(model, tok, plant_row):
    """A ReLU SAE whose feature 0 reads the direction of one token's activation, firing only near it."""
    acts, _ = token_activations(model, tok, TEXTS, layer=0)
    sae = SparseAutoencoder(acts.shape[1], 4, "relu")
    a = acts[plant_row]
    u = a / a.norm()
    with torch.no_grad():
        sae.W_enc[:, 0] = u
        scores = acts @ u
        sae.b_enc[0] = -float(scores.sort(descending=True).values[1] + scores.max()) / 2  # between 1st and 2nd
        sae.W_enc[:, 1] = -u  # a feature that fires on most other tokens
    return sae


def test_feature_search_finds_the_planted_token(lm):
    model, tok = lm
    _, index = token_activations(model, tok, TEXTS, layer=0)
    plant_id = tok.convert_tokens_to_ids(PLANT)
    ids = tok(TEXTS[2])["input_ids"]
    plant_pos = ids.index(plant_id)
    plant_row = int(((index[:, 0] == 2) & (index[:, 1] == plant_pos)).nonzero()[0])
    sae = _planted_sae(model, tok, plant_row)

    examples = top_activating_examples(sae, model, tok, TEXTS, layer=0, feature=0, k=5, context=3)
    assert len(examples) == 1  # it fires on the planted token alone
    top = examples[0]
    assert (top["text_index"], top["position"], top["token_id"], top["token"]) == (2, plant_pos, plant_id, PLANT)
    assert top["activation"] > 0 and top["context"] == f"{top['left']}[[{PLANT}]]{top['right']}"
    assert top["left"] == tok.decode(ids[plant_pos - 3 : plant_pos])
    many = top_activating_examples(sae, model, tok, TEXTS, layer=0, feature=1, k=4)
    assert len(many) == 4 and [e["activation"] for e in many] == sorted((e["activation"] for e in many), reverse=True)
    assert top_activating_examples(sae, model, tok, TEXTS, layer=0, feature=3) == []  # never fires
    with pytest.raises(AlignlabError, match="out of range"):
        top_activating_examples(sae, model, tok, TEXTS, layer=0, feature=4)

    per_text = feature_activations(sae, model, tok, TEXTS, layer=0)
    assert per_text.shape == (len(TEXTS), 4) and per_text[4].abs().sum() == 0  # the empty text
    labels = [PLANT in t for t in TEXTS]
    ranked = rank_features(per_text, labels)
    assert ranked[0]["feature"] == 0 and ranked[0]["auroc"] == 1.0 and ranked[0]["freq_neg"] == 0.0
    mean_pooled = feature_activations(sae, model, tok, TEXTS, layer=0, how="mean")
    assert torch.all(mean_pooled <= per_text + 1e-6)
    with pytest.raises(AlignlabError, match="pooling"):
        feature_activations(sae, model, tok, TEXTS, layer=0, how="sum")


def test_pool_features_matches_a_loop():
    sae = random_sae(d_in=8, d_sae=24, architecture="relu")
    acts = torch.randn(40, 8)
    index = torch.tensor([(i % 5, i // 5) for i in range(40)])
    f = sae.encode(acts)
    for how, reduce in (("max", lambda t: t.max(0).values), ("mean", lambda t: t.mean(0))):
        pooled = pool_features(sae, acts, index, 6, how)
        for text in range(5):
            assert torch.allclose(pooled[text], reduce(f[index[:, 0] == text]), atol=1e-6)
        assert pooled[5].abs().sum() == 0


def test_rank_features_puts_the_planted_feature_first():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    acts = np.maximum(rng.normal(size=(200, 50)), 0)
    acts[:, 17] += 2.0 * labels + rng.normal(0, 0.3, 200)  # planted: fires more on positives
    acts[:, 3] -= 1.0 * labels  # anti-associated: ranks last
    ranked = rank_features(acts, labels)
    assert [r["feature"] for r in ranked][:1] == [17] and ranked[-1]["feature"] == 3
    assert ranked[0]["auroc"] > 0.95 and ranked[0]["mean_pos"] > ranked[0]["mean_neg"] + 1.5
    assert len(rank_features(acts, labels, top=5)) == 5
    # vectorised AUROC agrees with sklearn's, ties included
    acts[:, 5] = 0.0
    aucs = auroc_per_feature(acts, labels)
    for j in (0, 3, 5, 17):
        assert aucs[j] == pytest.approx(auroc(acts[:, j], labels))
    assert aucs[5] == 0.5
    with pytest.raises(AlignlabError, match="both classes"):
        rank_features(acts, np.zeros(200, bool))
