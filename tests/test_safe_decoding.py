"""Harm-tag-aware decoding: the cached batched version against a slow uncached reference, plus its guarantees."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from alignlab import AlignlabError
from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.models.safe_decoding import SafeDecodingConfig, row_uniforms, safe_sample, safe_sample_ids

TAG = "<|harm|>"
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "how to bake bread at home", "rules of the game"] * 5
PROMPTS = ["the cat", "how to bake bread at home and", "a"]  # different lengths, so batches are left-padded


@pytest.fixture(scope="module")
def tok():
    tokenizer = build_tokenizer(TEXTS, vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": [TAG]})
    return tokenizer


@pytest.fixture(scope="module")
def tag(tok) -> int:
    return tok.convert_tokens_to_ids(TAG)


@pytest.fixture(scope="module")
def model(tok, one_thread):
    """Built after the tag is added, so it has a row for it; weights scaled up so that logits are far from flat."""
    torch.manual_seed(0)
    m = build_tiny_model(TinyModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64), tok)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return m.eval()


@contextmanager
def logit_edit(model, edit) -> Iterator[None]:
    """Temporarily rewrite the model's logits: edit(input_ids aligned with logits, logits) -> new logits."""

    def hook(_module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        output.logits = edit(ids[:, -output.logits.shape[1] :], output.logits)
        return output

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def record_lookahead_tokens(model) -> Iterator[list[int]]:
    """Every token fed one at a time (the lookahead candidates), a superset of the emitted tokens."""
    seen: list[int] = []

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids.shape[1] == 1:
            seen.extend(ids.flatten().tolist())

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def reference_ids(model, tokenizer, prompts, tag, cfg, max_new_tokens, seed, banned=()) -> list[list[int]]:
    """Slow and obvious: one prompt at a time, no padding, no cache, a full forward of prefix+candidate for each."""
    uniforms = row_uniforms(seed, len(prompts), max_new_tokens)
    excluded = [tag, *banned]
    results = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt)["input_ids"]
        new: list[int] = []
        for step in range(max_new_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1]
            scores = logits / (cfg.temperature or 1.0)
            scores[excluded] = -math.inf
            cand_scores, cand = scores.topk(cfg.top_k)
            p_tag = [model(torch.tensor([[*ids, c]])).logits[0, -1].softmax(-1)[tag].item() for c in cand.tolist()]
            dropped = set(sorted(range(cfg.top_k), key=lambda j: -p_tag[j])[: cfg.drop])
            kept = [j for j in range(cfg.top_k) if j not in dropped]
            if cfg.temperature == 0:
                j = kept[0]
            else:
                weights = cand_scores[kept].softmax(0).tolist()
                target, acc, j = uniforms[i, step].item(), 0.0, kept[-1]
                for jj, w in zip(kept, weights, strict=True):
                    acc += w
                    if acc > target:
                        j = jj
                        break
            token = cand[j].item()
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids.append(token)
        results.append(new)
    return results


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 4, "drop": 4}, "drop"),
        ({"drop": -1}, "drop"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(AlignlabError, match=f"'{field}'"):
        SafeDecodingConfig(**kwargs).check()


def test_call_errors(model, tok, tag):
    with pytest.raises(AlignlabError, match="'top_k'"):
        safe_sample(model, tok, ["the"], tag, SafeDecodingConfig(top_k=len(tok), drop=1), 2, 0)
    with pytest.raises(AlignlabError, match="tag_token_id"):
        safe_sample(model, tok, ["the"], len(tok) + 5, SafeDecodingConfig(), 2, 0)
    with pytest.raises(AlignlabError, match="no tokens"):
        safe_sample(model, tok, ["the", ""], tag, SafeDecodingConfig(), 2, 0)
    assert safe_sample(model, tok, ["the"], tag, SafeDecodingConfig(), 0, 0) == [""]


@pytest.mark.parametrize(
    "cfg", [SafeDecodingConfig(top_k=5, drop=2), SafeDecodingConfig(top_k=4, drop=3, temperature=0.0)]
)
def test_fast_matches_uncached_reference(model, tok, tag, cfg):
    banned = [tok.convert_tokens_to_ids("e")]
    fast = safe_sample_ids(model, tok, PROMPTS, tag, cfg, max_new_tokens=8, seed=11, banned_token_ids=banned)
    assert fast == reference_ids(model, tok, PROMPTS, tag, cfg, 8, 11, banned)
    assert sum(map(len, fast)) > 10  # not vacuous: most rows ran several steps
    # and the drop mattered: plain top-k with the same draws takes other tokens somewhere
    plain = safe_sample_ids(model, tok, PROMPTS, tag, SafeDecodingConfig(cfg.top_k, 0, cfg.temperature), 8, 11, banned)
    assert plain != fast


def test_fast_matches_reference_when_rows_finish_at_different_steps(model, tok, tag):
    """EOS made likely: rows leave the batch one by one, and the survivors must be unaffected."""
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 3.0
    cfg = SafeDecodingConfig(top_k=5, drop=2)
    with logit_edit(model, lambda _ids, logits: logits + bias):
        fast = safe_sample_ids(model, tok, PROMPTS * 2, tag, cfg, max_new_tokens=10, seed=4)
        assert fast == reference_ids(model, tok, PROMPTS * 2, tag, cfg, 10, 4)
    lengths = {len(row) for row in fast}
    assert len(lengths) >= 3 and min(lengths) < 10 and max(lengths) > 1, lengths


def test_tag_and_banned_never_candidates(model, tok, tag):
    banned = [tok.convert_tokens_to_ids(t) for t in ("e", "t")]
    bias = torch.zeros(len(tok))
    bias[[tag, *banned]] = 10.0  # left alone, the model would emit these almost always

    with logit_edit(model, lambda _ids, logits: logits + bias), record_lookahead_tokens(model) as seen:
        out = safe_sample_ids(model, tok, PROMPTS, tag, SafeDecodingConfig(), 12, 0, banned_token_ids=banned)
    assert seen and not {tag, *banned} & set(seen)
    assert not {tag, *banned} & {t for row in out for t in row}


def test_token_that_precedes_the_tag_is_avoided(model, tok, tag):
    trigger = tok.convert_tokens_to_ids("a")

    def edit(ids, logits):
        logits = logits.clone()
        logits[..., trigger] += 4.0  # a likely token ...
        logits[..., tag] += torch.where(ids == trigger, 30.0, 0.0)  # ... after which the tag is near certain
        return logits

    prompts = ["the cat"] * 8
    with logit_edit(model, edit):
        safe = safe_sample_ids(model, tok, prompts, tag, SafeDecodingConfig(top_k=8, drop=1), 10, 3)
        plain = safe_sample_ids(model, tok, prompts, tag, SafeDecodingConfig(top_k=8, drop=0), 10, 3)
    assert all(trigger not in row for row in safe)
    assert sum(row.count(trigger) for row in plain) >= 5


def test_drop0_full_topk_is_plain_sampling(model, tok, tag):
    allowed = len(tok) - 1
    favourites = [tok.convert_tokens_to_ids(t) for t in ("a", "b", "c")]
    bias = torch.zeros(len(tok))
    bias[favourites] = torch.tensor([7.0, 6.0, 5.0])
    bias[tag] = 9.0  # banned: its mass must be renormalised away, not given to anything
    n = 300
    with logit_edit(model, lambda _ids, logits: logits + bias), record_lookahead_tokens(model) as seen:
        out = safe_sample_ids(model, tok, ["the cat"] * n, tag, SafeDecodingConfig(top_k=allowed, drop=0), 1, 5)
        logits = model(**tok(["the cat"], return_tensors="pt")).logits[0, -1].detach()
    assert set(seen) == set(range(len(tok))) - {tag}  # every allowed token was a candidate: the full support
    logits[tag] = -math.inf
    expected = logits.softmax(0)
    first = torch.tensor([row[0] if row else tok.eos_token_id for row in out])
    for t in favourites:
        p, freq = expected[t].item(), (first == t).float().mean().item()
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n) + 0.01, (t, freq, p)


def test_same_seed_same_output(model, tok, tag):
    cfg = SafeDecodingConfig(top_k=6, drop=2, temperature=1.2)
    a = safe_sample(model, tok, PROMPTS, tag, cfg, 10, seed=7)
    assert a == safe_sample(model, tok, PROMPTS, tag, cfg, 10, seed=7)
    assert a != safe_sample(model, tok, PROMPTS, tag, cfg, 10, seed=8)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_padded_batch_matches_each_prompt_alone(model, tok, tag, temperature):
    cfg = SafeDecodingConfig(top_k=6, drop=2, temperature=temperature)
    # row 0's random stream depends only on the seed, so each prompt leads a padded batch and then runs alone
    for order in (PROMPTS, PROMPTS[::-1], PROMPTS[1:] + PROMPTS[:1]):
        batched = safe_sample_ids(model, tok, order, tag, cfg, 8, seed=2)
        assert batched[0] == safe_sample_ids(model, tok, order[:1], tag, cfg, 8, seed=2)[0]
    if temperature == 0:  # greedy: every row must match its solo run
        batched = safe_sample_ids(model, tok, PROMPTS, tag, cfg, 8, seed=2)
        assert batched == [safe_sample_ids(model, tok, [p], tag, cfg, 8, seed=2)[0] for p in PROMPTS]
