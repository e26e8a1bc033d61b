"""Harm-tag-aware decoding, the inference half of "Safety Pretraining" (Maini et al. 2025).

A model pretrained with a harm-tag token sprinkled through harmful text learns to predict the tag where harmful text
is likely. At each step we look one token ahead: of the top-k candidates, drop those after which the model most
expects the tag, sample among the rest, and never emit the tag itself. The lookahead forward doubles as the real
step, so a step costs one forward of batch×top_k single tokens against a KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignlab import AlignlabError
from alignlab.config import doc


@dataclass(frozen=True)
class SafeDecodingConfig:
    """How hard to steer. Every field is validated by `check()`."""

    top_k: int = doc("candidates looked ahead at each step", 8)
    drop: int = doc("of those, drop the `drop` with the highest P(tag | prefix + candidate); 0 = plain top-k with the "
                    "tag banned", 4)
    temperature: float = doc("sampling temperature over the kept candidates; 0 = greedy", 1.0)

    def check(self) -> SafeDecodingConfig:
        rules = [
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 1, "must be an int >= 1"),
            ("drop", isinstance(self.drop, int) and 0 <= self.drop < self.top_k, "must be an int in 0..top_k-1"),
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, "must be finite and >= 0"),
        ]
        for name, ok, why in rules:
            if not ok:
                raise AlignlabError(f"safe decoding field '{name}'={getattr(self, name)!r} {why}")
        return self


def row_uniforms(seed: int, n_rows: int, n_steps: int) -> torch.Tensor:
    """[n_rows, n_steps] uniforms; row i's stream depends only on (seed, i), so batching never changes a sample.

    Row i draws from its own generator, seeded by the i-th draw of a master generator seeded with `seed` (so seeds
    s and s+1 do not share rows shifted by one). A prefix of a row's stream does not depend on n_steps either.
    """
    master = torch.Generator().manual_seed(seed)
    row_seeds = [int(torch.randint(0, 2**62, (1,), generator=master)) for _ in range(n_rows)]
    rows = [torch.rand(n_steps, generator=torch.Generator().manual_seed(s)) for s in row_seeds]
    return torch.stack(rows) if rows else torch.empty(0, n_steps)


def pick_candidates(cand_scores: torch.Tensor, keep: torch.Tensor, u: torch.Tensor, greedy: bool) -> torch.Tensor:
    """Index into each row's candidates: inverse-CDF sample from softmax(cand_scores) renormalised over `keep`.

    cand_scores [n, k] (temperature already applied, best first), keep [n, k] bool (>= 1 True a row), u [n] in [0, 1).
    """
    if greedy:
        return keep.int().argmax(dim=1)  # first kept = highest-scoring kept (argmax returns the first maximum)
    probs = cand_scores.masked_fill(~keep, -math.inf).softmax(dim=1)
    cdf = probs.cumsum(dim=1)
    hit = keep & (cdf > (u * cdf[:, -1])[:, None])
    # u*total can round up to total; fall back to the last kept candidate rather than to a dropped one
    last_kept = keep.shape[1] - 1 - keep.flip(1).int().argmax(dim=1)
    return torch.where(hit.any(dim=1), hit.int().argmax(dim=1), last_kept)


def safe_sample(
    model,
    tokenizer,
    prompts: list[str],
    tag_token_id: int,
    cfg: SafeDecodingConfig,
    max_new_tokens: int,
    seed: int,
    banned_token_ids: Sequence[int] = (),
) -> list[str]:
    """One completion per prompt, stopping at EOS, decoded with special tokens removed (see `safe_sample_ids`)."""
    ids = safe_sample_ids(model, tokenizer, prompts, tag_token_id, cfg, max_new_tokens, seed, banned_token_ids)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


@torch.no_grad()
def safe_sample_ids(
    model,
    tokenizer,
    prompts: list[str],
    tag_token_id: int,
    cfg: SafeDecodingConfig,
    max_new_tokens: int,
    seed: int,
    banned_token_ids: Sequence[int] = (),
) -> list[list[int]]:
    """One completion per prompt as new token ids, stopping at EOS (which is left out).

    P(tag) is read from the untempered lookahead distribution (the tag detector is the model, not the sampler);
    the temperature only shapes the choice among the kept candidates. Seeded per row (see `row_uniforms`): the same
    seed gives the same output, and a prompt's completion does not depend on the other prompts in the batch.
    """
    cfg.check()
    if max_new_tokens < 0:
        raise AlignlabError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]
    model.eval()
    device = next(model.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    mask = batch["attention_mask"]
    empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise AlignlabError(f"prompts {empty} encode to no tokens; safe_sample needs at least one prompt token")
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
    out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[:, -1].float()

    vocab, k = logits.shape[-1], cfg.top_k
    excluded = sorted({int(tag_token_id), *(int(t) for t in banned_token_ids)})
    if excluded[0] < 0 or excluded[-1] >= vocab:
        raise AlignlabError(f"tag_token_id and banned_token_ids must lie in 0..{vocab - 1}, got {excluded}")
    if k > vocab - len(excluded):
        raise AlignlabError(f"safe decoding field 'top_k'={k} exceeds the {vocab - len(excluded)} allowed tokens")
    excluded_t = torch.tensor(excluded, device=device)
    eos = tokenizer.eos_token_id
    greedy = cfg.temperature == 0
    uniforms = row_uniforms(seed, len(prompts), max_new_tokens).to(device)

    rows = torch.arange(len(prompts), device=device)  # original index of each unfinished row
    next_pos = pos[:, -1] + 1
    new_tokens: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        n = rows.numel()
        scores = logits / (cfg.temperature or 1.0)  # a fresh tensor: greedy ignores the scale
        scores[:, excluded_t] = -math.inf
        cand_scores, cand = scores.topk(k, dim=1)  # [n, k], best first
        # lookahead: row r's cache repeated k times (r*k + j holds candidate j), one forward of all n*k candidates
        cache.batch_repeat_interleave(k)
        step_mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
        look = model(
            input_ids=cand.reshape(n * k, 1),
            attention_mask=step_mask.repeat_interleave(k, dim=0),
            position_ids=next_pos.repeat_interleave(k)[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        look_logits = look.logits[:, -1].float()
        p_tag = look_logits.softmax(dim=-1)[:, tag_token_id].view(n, k)
        keep = torch.ones_like(p_tag, dtype=torch.bool)
        if cfg.drop:
            keep.scatter_(1, p_tag.topk(cfg.drop, dim=1).indices, False)
        choice = pick_candidates(cand_scores, keep, uniforms[rows, step], greedy)
        token = cand.gather(1, choice[:, None]).squeeze(1)
        for r, t in zip(rows.tolist(), token.tolist(), strict=True):
            new_tokens[r].append(t)
        # the chosen lookahead becomes the real step; finished rows leave the batch (and are never sampled again)
        alive = token != eos if eos is not None else torch.ones_like(token, dtype=torch.bool)
        if not alive.any() or step == max_new_tokens - 1:
            break
        chosen = (torch.arange(n, device=device) * k + choice)[alive]
        cache.batch_select_indices(chosen)
        logits = look_logits[chosen]
        mask, next_pos, rows = step_mask[alive], next_pos[alive] + 1, rows[alive]

    return [toks[:-1] if eos is not None and toks and toks[-1] == eos else toks for toks in new_tokens]
