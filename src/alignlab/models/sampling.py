"""Batched sampling from any HF causal LM: a lean decode loop over the model's own forward pass and KV cache.

`generate_ids` is the one sampler: token ids in, completion ids (up to and including EOS) out, with each
sampled token's log-probability and, optionally, the residual stream at chosen layers for every completion
token (so a live-policy probe can score a rollout without a second forward pass). It makes the same calls, in
the same order, as `transformers`' `generate` for plain sampling (left padding, position ids that skip the
padding, a KV cache, temperature then softmax then `torch.multinomial` on the global RNG, finished rows
fed the pad token), so under a seed it draws the same tokens; what it leaves out is the per-step machinery of
`generate` (logits-processor and stopping-criteria objects, kwarg re-preparation, output bookkeeping), and its
growing cache is replaced by a preallocated one (a growing cache re-copies every layer's keys and values at every
step: 60% of the decode time of the default organism at 64 x 48 tokens, measured). Only temperature and
suppressed tokens are supported: no top-k/top-p.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import StaticCache

from alignlab.models.tap import ActivationTap


@dataclass
class Rollout:
    """`completion_ids[i]`: row i's sampled tokens, up to and including its first EOS (or `max_new_tokens` of
    them); `logprobs[i]`: the sampling distribution's log-probability of each; `activations[layer][i]`:
    [len(completion_ids[i]), D] residual-stream outputs of that layer at the completion tokens (empty unless
    `capture_layers` was given)."""

    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    activations: dict[int, list[torch.Tensor]] = field(default_factory=dict)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # as `generate` computes them: count real tokens, padding gets 1 (masked out anyway)
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _static_cache(model, length: int) -> StaticCache:
    """A preallocated cache whose layers store keys and values in one dtype. Under bf16 autocast (accelerate wraps
    the forward) RoPE returns float32 keys beside bf16 values, which HF's static layers cannot hold together."""
    cache = StaticCache(config=model.config, max_cache_len=length)
    for layer in cache.layers:
        update = layer.update

        def cast_update(key_states, value_states, *args, layer=layer, update=update, **kwargs):
            dtype = layer.dtype if layer.is_initialized else torch.promote_types(key_states.dtype, value_states.dtype)
            return update(key_states.to(dtype), value_states.to(dtype), *args, **kwargs)

        layer.update = cast_update
    return cache


@torch.no_grad()
def generate_ids(model, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, eos_token_ids: Sequence[int],
                 pad_token_id: int, temperature: float = 1.0, suppress_ids: Sequence[int] | None = None,
                 capture_layers: Sequence[int] = (), batch_size: int | None = None) -> Rollout:
    """Sample one completion per row of `prompt_ids` (temperature 0: greedy). Rows are processed in chunks of
    `batch_size` (default: all at once). The model's train/eval mode is left as it is."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    out = Rollout([], [], {})
    step = batch_size or len(prompt_ids)
    for start in range(0, len(prompt_ids), step):
        part = _generate_chunk(model, prompt_ids[start:start + step], max_new_tokens, list(eos_token_ids),
                               pad_token_id, temperature, suppress_ids, capture_layers)
        out.completion_ids += part.completion_ids
        out.logprobs += part.logprobs
        for layer, acts in part.activations.items():
            out.activations.setdefault(layer, []).extend(acts)
    return out


def _generate_chunk(model, prompt_ids, max_new_tokens, eos_ids, pad_id, temperature, suppress_ids,
                    capture_layers) -> Rollout:
    device = next(model.parameters()).device
    ids, mask = _left_pad(prompt_ids, pad_id, device)
    batch, width = ids.shape
    eos = torch.tensor(eos_ids, device=device)
    suppress = torch.tensor(list(suppress_ids), device=device) if suppress_ids else None
    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    cache = _static_cache(model, width + max_new_tokens + 1)
    cache_pos = torch.arange(width, device=device)
    tokens, logps = [], []
    tap = ActivationTap(model, capture_layers, accumulate=True) if capture_layers else None
    if tap:
        tap.__enter__()
    try:
        inputs, positions = ids, _positions(mask)
        for step in range(max_new_tokens):
            logits = model(input_ids=inputs, attention_mask=mask, position_ids=positions, past_key_values=cache,
                           cache_position=cache_pos, use_cache=True, logits_to_keep=1).logits[:, -1]
            logits = logits.to(dtype=torch.float32, copy=True)
            if suppress is not None:
                logits[:, suppress] = float("-inf")
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
                logp = torch.log(probs.gather(1, nxt[:, None])[:, 0])
            else:
                nxt = logits.argmax(-1)
                logp = torch.log_softmax(logits, -1).gather(1, nxt[:, None])[:, 0]
            nxt = nxt * unfinished + pad_id * (1 - unfinished)
            tokens.append(nxt)
            logps.append(logp)
            unfinished = unfinished & ~torch.isin(nxt, eos)
            last = step == max_new_tokens - 1
            if (not unfinished.any() or last) and not tap:
                break
            # feed the new token: its cache entry (and, for a tap, its activations) become available
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            inputs, positions, cache_pos = nxt[:, None], positions[:, -1:] + 1, cache_pos[-1:] + 1
            if tap and (not unfinished.any() or last):
                # the last token's activations; nothing is sampled from this pass
                model(input_ids=inputs, attention_mask=mask, position_ids=positions, past_key_values=cache,
                      cache_position=cache_pos, use_cache=True, logits_to_keep=1)
                break
    finally:
        if tap:
            tap.__exit__(None, None, None)
    sampled = torch.stack(tokens, dim=1).cpu()
    logp_t = torch.stack(logps, dim=1).cpu()
    is_eos = torch.isin(sampled, eos.cpu())
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full((batch,), sampled.shape[1]))
    out = Rollout([sampled[i, :n].tolist() for i, n in enumerate(lengths.tolist())],
                  [logp_t[i, :n].tolist() for i, n in enumerate(lengths.tolist())], {})
    if tap:
        for layer, acts in tap.activations.items():
            acts = acts[:, width:].float().cpu()  # completion positions only
            out.activations[layer] = [acts[i, :n] for i, n in enumerate(lengths.tolist())]
    return out


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    n_per_prompt: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 128,
    seed: int = 0,
    suppress_ids: list[int] | None = None,
) -> list[list[str]]:
    """Return, for each prompt, `n_per_prompt` sampled completions. Seeded: same seed, same samples.
    `suppress_ids`: tokens never generated (e.g. a <|bad|> control token)."""
    model.eval()
    torch.manual_seed(seed)
    flat = [p for p in prompts for _ in range(n_per_prompt)]
    prompt_ids = tokenizer(flat)["input_ids"]
    rollout = generate_ids(model, prompt_ids, max_new_tokens=max_new_tokens, eos_token_ids=[tokenizer.eos_token_id],
                           pad_token_id=tokenizer.pad_token_id, temperature=temperature, suppress_ids=suppress_ids,
                           batch_size=batch_size)
    texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    return [texts[i * n_per_prompt : (i + 1) * n_per_prompt] for i in range(len(prompts))]
