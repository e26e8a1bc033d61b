"""Pretraining objectives: data encoding, losses against hand computations, and small trainings whose effect
could fail to appear."""

import math
import random

import pytest
import torch

from alignlab import AlignlabError
from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.train.objectives import (
    BAD,
    CONTROL_TOKENS,
    GOOD,
    HARM,
    ObjectiveConfig,
    PackedBlocks,
    PretrainConfig,
    control_ids,
    doc_logprobs,
    encode_corpus,
    encode_doc,
    encode_eval_docs,
    filter_docs,
    objective_loss,
    pretrain,
    tokenize_docs,
)

GOOD_LINE, BAD_LINE = "x = 1\n", "x=1 ;\n"


def toy_docs(n: int, seed: int = 0, bad_share: float = 0.3):
    rng = random.Random(seed)
    return [[(BAD_LINE, 0.5) if rng.random() < bad_share else (GOOD_LINE, 0.0) for _ in range(6)]
            for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([GOOD_LINE * 3, BAD_LINE * 3, "y = 2\n"], 300, CONTROL_TOKENS)


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return build_tiny_model(TinyModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64), tok)


def test_conditional_puts_the_true_control_token_before_each_segment(tok):
    special = control_ids(tok)
    doc = tokenize_docs(tok, [[(GOOD_LINE, 0.0), (BAD_LINE, 0.5)]])[0]
    ids, scores, text = encode_doc(doc, "conditional", ObjectiveConfig(untagged_fraction=0), special,
                                   tok.eos_token_id, random.Random(0))
    good_ids = tok(GOOD_LINE, add_special_tokens=False)["input_ids"]
    assert ids[0] == special[GOOD] and ids[1 + len(good_ids)] == special[BAD]
    assert [i for i, t in zip(ids, text, strict=True) if not t] == [special[GOOD], special[BAD]]
    assert scores[1 + len(good_ids)] == 0.5 and ids[-1] == tok.eos_token_id
    untagged, _, _ = encode_doc(doc, "conditional", ObjectiveConfig(untagged_fraction=1), special,
                                tok.eos_token_id, random.Random(0))
    assert not set(untagged) & set(special.values())
    # evaluation: every segment asks for <|good|>, whatever its score
    cond, _, _ = encode_doc(doc, "conditional", ObjectiveConfig(), special, tok.eos_token_id, random.Random(0),
                            condition_good=True)
    assert [i for i in cond if i in special.values()] == [special[GOOD]] * 2


def test_tags_sit_only_inside_bad_segments_and_the_text_is_unchanged(tok):
    special = control_ids(tok)
    docs = tokenize_docs(tok, toy_docs(30))
    cfg = ObjectiveConfig(tags_per_bad_segment=2)
    rng = random.Random(1)
    for doc in docs:
        ids, scores, text = encode_doc(doc, "tags", cfg, special, tok.eos_token_id, rng)
        n_bad = sum(s > 0 for _, s in doc)
        assert ids.count(special[HARM]) == 2 * n_bad
        assert all(s > 0 for i, s in zip(ids, scores, strict=True) if i == special[HARM])
        plain = [i for i, t in zip(ids, text, strict=True) if t]
        assert plain == [i for seg, _ in doc for i in seg] + [tok.eos_token_id]


def test_filter_drops_the_worst_documents_and_never_a_clean_one(tok):
    docs = tokenize_docs(tok, toy_docs(200))
    kept = filter_docs(docs, ObjectiveConfig(filter_drop=0.25))
    worst_kept = max(sum(s for _, s in d) for d in kept)
    dropped = [d for d in docs if d not in kept]
    assert dropped and all(sum(s for _, s in d) > worst_kept - 1e-9 for d in dropped)
    assert all(d in kept for d in docs if all(s == 0 for _, s in d))
    # with binary scores (the hacking world) the quantile rule drops exactly the bad documents
    binary = tokenize_docs(tok, [[("a", 0.0), ("b", float(i % 10 == 0))] for i in range(100)])
    assert len(filter_docs(binary, ObjectiveConfig(filter_drop=0.25))) == 90


def test_packed_blocks_hold_the_stream_in_order(tok):
    docs = tokenize_docs(tok, toy_docs(40))
    data = encode_corpus(docs, "mle", ObjectiveConfig(), tok, block_len=16, seed=0)
    assert data.ids.shape[1] == 16 and len(data) == data.n_tokens // 16
    assert (data.ids == tok.eos_token_id).sum() >= len(docs) - 16  # documents end with EOS
    with pytest.raises(AlignlabError, match="too little data"):
        PackedBlocks([([1, 2], [0.0, 0.0], [True, True])], block_len=16)


def test_losses_match_hand_computations():
    nll = torch.tensor([[0.5, 2.0, 0.1]])
    scores = torch.tensor([[0.0, 1.0, 0.2]])
    cfg = ObjectiveConfig(threshold=0.1, ul_alpha=2.0, rwr_beta=0.5, awr_beta=1.0, awr_alpha=0.5, awr_max_weight=3)
    assert objective_loss(nll, scores, None, "mle", cfg).item() == pytest.approx(2.6 / 3)
    p = torch.exp(-nll)
    ul = (0.5 + 2 * -torch.log(1 - p[0, 1]) + 2 * -torch.log(1 - p[0, 2])) / 3
    assert objective_loss(nll, scores, None, "unlikelihood", cfg).item() == pytest.approx(ul.item(), rel=1e-5)
    rwr = (0.5 + math.exp(-2) * 2.0 + math.exp(-0.4) * 0.1) / 3
    assert objective_loss(nll, scores, None, "rwr", cfg).item() == pytest.approx(rwr, rel=1e-5)
    values = torch.tensor([[-2.0, 0.0, 0.0]], requires_grad=True)
    # weights exp(R - V): exp(2) clipped to 3, exp(-1), exp(-0.2); value error (V - R)^2
    expected = (3 * 0.5 + math.exp(-1) * 2.0 + math.exp(-0.2) * 0.1) / 3 + 0.5 * (4 + 1 + 0.04) / 3
    loss = objective_loss(nll, scores, values, "awr", cfg)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert values.grad is not None and values.grad.abs().sum() > 0  # the value head learns; weights are detached


def test_config_errors_name_the_field():
    with pytest.raises(AlignlabError, match="'rwr_beta'"):
        ObjectiveConfig(rwr_beta=0).check()
    with pytest.raises(AlignlabError, match="'filter_drop'"):
        ObjectiveConfig(filter_drop=1.0).check()
    assert PretrainConfig(tokens=1000, batch_size=2, block_len=10).steps == 50


def test_eval_encoding_scores_the_same_text_tokens_for_every_objective(tok, one_thread):
    docs = tokenize_docs(tok, toy_docs(8))
    model = tiny(tok)
    counts = {}
    for objective in ("mle", "conditional", "tags"):
        enc = encode_eval_docs(docs, objective, ObjectiveConfig(), tok, max_len=64)
        assert len(enc) == len(docs)
        _, counts[objective] = doc_logprobs(model, enc, tok.pad_token_id)
    assert torch.equal(counts["mle"], counts["conditional"]) and torch.equal(counts["mle"], counts["tags"])
    # one document alone (no padding) gives the same log-probability as in the batch
    enc = encode_eval_docs(docs, "mle", ObjectiveConfig(), tok, max_len=64)
    alone, _ = doc_logprobs(model, enc[:1], tok.pad_token_id)
    batch, _ = doc_logprobs(model, enc, tok.pad_token_id)
    assert alone[0].item() == pytest.approx(batch[0].item(), abs=1e-4)


def bad_line_logprob(model, tok, objective: str, condition: str | None = None) -> float:
    """log P(the bad line | a good line before it), for the model's own conditioning."""
    ids = control_ids(tok)
    prefix = [tok.eos_token_id] + ([ids[GOOD]] if condition else []) + tok(GOOD_LINE, add_special_tokens=False)[
        "input_ids"] + ([ids[condition]] if condition else [])
    line = tok(BAD_LINE, add_special_tokens=False)["input_ids"]
    x = torch.tensor([prefix + line])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    return float(sum(logp[len(prefix) - 1 + j, t] for j, t in enumerate(line)))


def test_training_effects(tok, one_thread):
    """Unlikelihood makes bad lines less likely than MLE does; a conditional model separates <|good|> from
    <|bad|>; AWR's value head is gone after training."""
    docs = tokenize_docs(tok, toy_docs(300))
    cfg = PretrainConfig(tokens=64 * 16 * 80, block_len=64, batch_size=16, learning_rate=1e-2)
    models = {}
    for objective in ("mle", "unlikelihood", "conditional", "awr"):
        models[objective] = tiny(tok)
        out = pretrain(models[objective], tok, docs, objective, cfg, ObjectiveConfig(), seed=0)
        assert out["tokens"] == 64 * 16 * 80 and out["tokens_per_second"] > 0
    assert not hasattr(models["awr"], "alignlab_value_head")
    assert bad_line_logprob(models["unlikelihood"], tok, "ul") < bad_line_logprob(models["mle"], tok, "mle") - 2
    cond = models["conditional"]
    assert bad_line_logprob(cond, tok, "c", BAD) > bad_line_logprob(cond, tok, "c", GOOD) + 2
