"""Gradient-similarity attribution: the count sketch, per-example gradients against backward(), completion-only
query loss, the vmap -> loop fallback, and retrieval of planted documents from a briefly trained tiny model."""

import dataclasses

import numpy as np
import pytest
import torch

from alignlab import AlignlabError
from alignlab.audit import attribution as attr
from alignlab.audit.attribution import (
    AttributionConfig,
    CountSketch,
    attribute,
    document_gradients,
    loss_change,
    query_gradients,
    select_parameters,
    top_documents,
)
from alignlab.models.tiny import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.organisms.reward_hacker import CorpusConfig, make_labelled_corpus
from alignlab.train.lm import LMTrainConfig, train_lm

pytestmark = pytest.mark.usefixtures("one_thread")

HACKY = CorpusConfig(n_docs=400, hack_fractions={"harness_override": 0.03, "hardcode": 0.03})


@pytest.fixture(scope="module")
def tiny(one_thread):
    """An untrained d32 x 2 model: enough for gradient bookkeeping."""
    corpus = make_labelled_corpus(CorpusConfig(n_docs=60), seed=5)
    texts = [t.prompt + c for t, c, _ in corpus]
    tok = build_tokenizer(texts, 300)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64), tok)
    return model, tok, texts, [(t.prompt, c) for t, c, _ in corpus]


@pytest.fixture(scope="module")
def trained(one_thread):
    """d64 x 2 trained 2 epochs (~3 s) on 400 task documents, ~3% of each hack style, labels known."""
    corpus = make_labelled_corpus(HACKY, seed=0)
    texts = [t.prompt + c for t, c, _ in corpus]
    kinds = [k for _, _, k in corpus]
    tok = build_tokenizer(texts, 512)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(d_model=64, n_layers=2, n_heads=2, d_ff=128), tok)
    train_lm(model, tok, texts, LMTrainConfig(epochs=2, batch_size=32, seed=0))
    # queries: fresh tasks (another seed) answered in each style
    fresh = make_labelled_corpus(dataclasses.replace(HACKY, n_docs=300, hack_fractions={
        "harness_override": 0.2, "hardcode": 0.2}), seed=100)
    queries = {style: [(t.prompt, c) for t, c, k in fresh if k == style][:6] for style in ("harness_override",
                                                                                          "hardcode")}
    return model, tok, texts, kinds, queries


def _manual_sketch(model, cfg: AttributionConfig, ids: list[int], labels: list[int]) -> torch.Tensor:
    """HF's own loss, loss.backward(), then the same count sketch: an independent path to one row."""
    model.zero_grad()
    x = torch.tensor([ids])
    model(input_ids=x, labels=torch.tensor([labels])).loss.backward()
    named = select_parameters(model, cfg.params)
    sketch = CountSketch([p.numel() for _, p in named], cfg.projection_dim, cfg.seed)
    row = sketch.project([p.grad.detach().clone().unsqueeze(0) for _, p in named])[0]
    model.zero_grad()
    return row


def _doc_ids(tok, text: str, max_len: int = 256) -> list[int]:
    return [*tok(text, add_special_tokens=False)["input_ids"][: max_len - 1], tok.eos_token_id]


# ---- config and input errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("method", "influence"), ("params", "last"), ("params", "first:2"), ("params", "last:-1"),
    ("projection_dim", 0), ("batch_size", 0), ("seed", -1), ("max_len", 1), ("engine", "jit"),
])
def test_config_rejects_bad_fields(field, value):
    with pytest.raises(AlignlabError, match=f"'{field}'"):
        AttributionConfig(**{field: value}).check()


def test_config_defaults_are_valid():
    assert AttributionConfig().check().method == "grad_cosine"


def test_bad_inputs_raise(tiny):
    model, tok, texts, pairs = tiny
    cfg = AttributionConfig(projection_dim=64)
    with pytest.raises(AlignlabError, match="'params'"):
        document_gradients(model, tok, texts[:2], dataclasses.replace(cfg, params="last:3"))
    with pytest.raises(AlignlabError, match="at least one training document"):
        document_gradients(model, tok, [], cfg)
    with pytest.raises(AlignlabError, match="document 1 is empty"):
        document_gradients(model, tok, [texts[0], ""], dataclasses.replace(cfg, loss="document"))
    with pytest.raises(AlignlabError, match="document 1 has no prompt/completion boundary"):
        document_gradients(model, tok, [texts[0], "no prompt here"], cfg)  # the completion loss needs a split
    with pytest.raises(AlignlabError, match="at least one"):
        query_gradients(model, tok, [], cfg)
    with pytest.raises(AlignlabError, match="at least one"):
        attribute(model, tok, texts[:2], [], cfg)
    with pytest.raises(AlignlabError, match="at least one training document"):
        attribute(model, tok, [], pairs[:1], cfg)
    with pytest.raises(AlignlabError, match="query 0: completion"):
        query_gradients(model, tok, [(pairs[0][0], "")], dataclasses.replace(cfg, query_eos=False))
    with pytest.raises(AlignlabError, match="no completion token left"):
        query_gradients(model, tok, pairs[:1], dataclasses.replace(cfg, max_len=4))
    with pytest.raises(AlignlabError, match="pair"):
        query_gradients(model, tok, ["just a string"], cfg)
    with pytest.raises(AlignlabError, match="'lr'"):
        loss_change(model, tok, texts[:1], pairs[:1], cfg, lr=0.0)


def test_top_documents():
    assert top_documents(np.array([0.1, 0.5, 0.5, -1.0]), 3) == [(1, 0.5), (2, 0.5), (0, 0.1)]
    assert [i for i, _ in top_documents([3.0, 1.0], 10)] == [0, 1]  # k > n: all, best first
    for bad_k in (0, -2):
        with pytest.raises(AlignlabError, match="'k'"):
            top_documents([1.0], bad_k)
    with pytest.raises(AlignlabError, match="non-empty"):
        top_documents([], 1)
    with pytest.raises(AlignlabError, match="NaN"):
        top_documents([1.0, float("nan")], 1)


# ---- the count sketch --------------------------------------------------------------------------------------------


def test_count_sketch_is_linear_seeded_and_blockwise():
    d = 5000
    x, y = torch.randn(3, d), torch.randn(3, d)
    sketch = CountSketch([d], 256, seed=7)
    combo = sketch.project([2 * x - 3 * y])
    assert torch.allclose(combo, 2 * sketch.project([x]) - 3 * sketch.project([y]), atol=1e-3)
    same = CountSketch([d], 256, seed=7)
    assert torch.equal(same.codes, sketch.codes)
    assert torch.equal(same.project([x]), sketch.project([x]))
    assert not torch.equal(CountSketch([d], 256, seed=8).codes, sketch.codes)
    # blocks of [B, *shape] are the same map as one flat [B, D] block
    blocks = CountSketch([1000, 4000], 256, seed=7)
    assert torch.equal(blocks.codes, sketch.codes)
    assert torch.allclose(blocks.project([x[:, :1000].reshape(3, 10, 100), x[:, 1000:]]), sketch.project([x]),
                          atol=1e-5)
    # each coordinate goes to one bucket with sign ±1
    assert set(sketch.signs.unique().tolist()) == {-1.0, 1.0}
    assert int(sketch.buckets.min()) >= 0 and int(sketch.buckets.max()) < 256
    with pytest.raises(AlignlabError, match="coordinates"):
        sketch.project([x[:, :10]])


def test_count_sketch_preserves_inner_products():
    torch.manual_seed(0)
    d, m = 50_000, 4096
    base, noise = torch.randn(d), torch.randn(d)
    vecs = torch.stack([
        base, 0.5 * base + noise, 0.9 * base + 0.3 * noise, noise, torch.randn(d),
        # non-negative pair, true cosine 0.75: without random signs its sketch cosine would be ~1
        torch.rand(d), torch.rand(d),
    ])
    sketched = CountSketch([d], m, seed=1).project([vecs])
    true_gram, sk_gram = vecs @ vecs.T, sketched @ sketched.T
    norms = true_gram.diag().sqrt()
    err = (sk_gram - true_gram) / torch.outer(norms, norms)
    # per-entry standard deviation ~ sqrt(2/m) = 0.022; 0.09 is 4 sigma
    assert err.abs().max() < 0.09, err
    cos = torch.nn.functional.cosine_similarity
    assert abs(cos(sketched[5], sketched[6], dim=0) - 0.75) < 0.05


# ---- per-example gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["vmap", "loop"])
@pytest.mark.parametrize("params", ["all", "last:1"])
def test_document_gradients_match_backward(tiny, engine, params):
    model, tok, texts, _ = tiny
    # lengths differ, batch_size 3 mixes them: padding must not leak into any row
    docs = [texts[0], "in [1 2] out [2 1]\nprogram:\nreverse", texts[1], texts[2] + texts[3]]
    cfg = AttributionConfig(params=params, projection_dim=512, batch_size=3, engine=engine, seed=3, loss="document")
    got = document_gradients(model, tok, docs, cfg)
    assert got.shape == (4, 512) and got.dtype == torch.float32
    for i, text in enumerate(docs):
        ids = _doc_ids(tok, text)
        want = _manual_sketch(model, cfg, ids, ids)
        assert torch.allclose(got[i], want, rtol=1e-4, atol=1e-5 * want.abs().max()), (i, (got[i] - want).abs().max())


def test_last_layers_select_the_top_of_the_model(tiny):
    model = tiny[0]
    names = [n for n, _ in select_parameters(model, "last:1")]
    assert any(n.startswith("model.layers.1.") for n in names)
    assert not any(n.startswith("model.layers.0.") for n in names)
    assert "model.norm.weight" in names and "model.embed_tokens.weight" in names  # tied LM head
    assert len(select_parameters(model, "last:0")) == 2
    assert len(select_parameters(model, "all")) == len(list(model.parameters()))


def test_documents_are_cut_as_train_lm_cuts_them(tiny):
    model, tok, texts, _ = tiny
    cfg = AttributionConfig(projection_dim=256, max_len=9, loss="document")
    ids = _doc_ids(tok, texts[4], max_len=9)
    assert len(ids) == 9 and ids[-1] == tok.eos_token_id
    assert torch.allclose(document_gradients(model, tok, [texts[4]], cfg)[0], _manual_sketch(model, cfg, ids, ids),
                          rtol=1e-4, atol=1e-6)


def test_query_gradient_counts_only_the_completion(tiny):
    model, tok, _, pairs = tiny
    cfg = AttributionConfig(projection_dim=1024, seed=2)
    got = query_gradients(model, tok, pairs[:3], cfg)
    for i, (prompt, completion) in enumerate(pairs[:3]):
        p = tok(prompt)["input_ids"]
        ids = p + tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        completion_only = _manual_sketch(model, cfg, ids, [-100] * len(p) + ids[len(p):])
        whole = _manual_sketch(model, cfg, ids, ids)
        assert torch.allclose(got[i], completion_only, rtol=1e-4, atol=1e-5 * completion_only.abs().max())
        # the prompt's own loss is excluded: the whole-sequence gradient is a clearly different vector
        assert torch.nn.functional.cosine_similarity(got[i], whole, dim=0) < 0.95
    # a query's gradient is also the same alone as in a batch
    assert torch.allclose(query_gradients(model, tok, pairs[1:2], cfg)[0], got[1], rtol=1e-4, atol=1e-6)


def test_the_default_completion_loss_is_the_query_loss_of_each_document(tiny):
    """One place for the loss choice: a task document's text is split after its prompt and scored by its
    completion's loss, the same as the (prompt, completion) pair; the whole-document loss is another vector."""
    model, tok, texts, pairs = tiny
    cfg = AttributionConfig(projection_dim=512)
    assert cfg.loss == "completion"
    by_text = document_gradients(model, tok, texts[:4], cfg)
    assert torch.allclose(by_text, document_gradients(model, tok, pairs[:4], cfg))
    assert torch.allclose(by_text, query_gradients(model, tok, pairs[:4], cfg))
    whole = document_gradients(model, tok, texts[:4], dataclasses.replace(cfg, loss="document"))
    assert (torch.nn.functional.cosine_similarity(by_text, whole, dim=1) < 0.95).all()


def test_auto_engine_falls_back_to_a_loop(tiny, monkeypatch):
    model, tok, texts, _ = tiny
    cfg = AttributionConfig(projection_dim=256, batch_size=4)
    loop = document_gradients(model, tok, texts[:6], dataclasses.replace(cfg, engine="loop"))

    def broken(*args, **kwargs):
        raise RuntimeError("vmap: data-dependent control flow is not supported")

    monkeypatch.setattr(attr, "_vmap_grads", broken)
    with pytest.warns(RuntimeWarning, match="falling back to a loop"):
        got = document_gradients(model, tok, texts[:6], cfg)
    assert torch.allclose(got, loop)
    with pytest.raises(RuntimeError, match="vmap"):
        document_gradients(model, tok, texts[:2], dataclasses.replace(cfg, engine="vmap"))


def test_scores_are_mean_cosines_and_deterministic(tiny):
    model, tok, texts, pairs = tiny
    cfg = AttributionConfig(projection_dim=512, batch_size=5)
    scores = attribute(model, tok, texts[:12], pairs[20:23], cfg)
    docs, queries = document_gradients(model, tok, texts[:12], cfg), query_gradients(model, tok, pairs[20:23], cfg)
    cos = torch.nn.functional.normalize(docs, dim=1) @ torch.nn.functional.normalize(queries, dim=1).T
    assert np.allclose(scores, cos.mean(1).double().numpy(), atol=1e-6)
    assert np.array_equal(scores, attribute(model, tok, texts[:12], pairs[20:23], cfg))
    assert np.allclose(scores, attribute(model, tok, texts[:12], pairs[20:23], dataclasses.replace(cfg, batch_size=2)),
                       atol=1e-5)
    dots = attribute(model, tok, texts[:12], pairs[20:23], dataclasses.replace(cfg, method="grad_dot"))
    assert np.allclose(dots, (docs @ queries.T).mean(1).double().numpy(), rtol=1e-4, atol=1e-6)


# ---- what the scores mean, on a trained model with known responsible documents -------------------------------------


@pytest.mark.parametrize(("style", "other"), [("harness_override", "hardcode"), ("hardcode", "harness_override")])
def test_planted_documents_are_retrieved(trained, style, other):
    model, tok, texts, kinds, queries = trained
    planted = kinds.count(style)
    base_rate = planted / len(kinds)
    assert 5 <= planted <= 25 and base_rate < 0.07
    scores = attribute(model, tok, texts, queries[style], AttributionConfig(projection_dim=2048))
    top = [i for i, _ in top_documents(scores, planted)]
    precision = np.mean([kinds[i] == style for i in top])
    # measured 1.0 for both styles (seed 0); 0.67-1.0 over seeds 0-2, base rate ~0.01-0.04
    assert precision >= 0.6 and precision >= 10 * base_rate, precision
    # and it is this behaviour, not "any hack": the other style hardly appears
    assert sum(kinds[i] == other for i in top) <= 1


def test_grad_dot_predicts_the_loss_change_of_a_training_step(trained):
    model, tok, texts, _, queries = trained
    before = [p.detach().clone() for p in model.parameters()]
    actual, predicted = loss_change(model, tok, texts[:12], queries["hardcode"][:4],
                                    AttributionConfig(projection_dim=2048), lr=1e-3)
    # measured r = 0.98-0.996 over seeds 0-2 at projection_dim 1024
    assert np.corrcoef(actual, predicted)[0, 1] > 0.9
    assert np.all(np.abs(actual) > 0)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))  # restored
