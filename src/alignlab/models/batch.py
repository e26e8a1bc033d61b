"""Tokens in, model inputs out: the one way prompts and (prompt, completion) pairs are encoded and batched.

Every reader of activations or log-probabilities (harvest, SAE token batches, per-token probe scores,
ProbeReward, the study's KL estimate) and the sampler batch the same way: rows left-padded, position ids that
skip the padding (as `generate` feeds a model), so an example's activations do not depend on its batch. Prompts
are encoded as TRL encodes them for GRPO: text with the tokenizer's special tokens, a message list through the
tokenizer's chat template with the generation prompt. Completions are encoded without special tokens, and a
completion's *text tokens* are what a probe pools: an EOS that ends a sampled completion (TRL's
`completion_ids` keep it) is not part of them, since a completion harvested from its text never has one.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch


def pad_id(tokenizer) -> int:
    """The tokenizer's pad token, else its EOS (padding is masked out; any id works)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return value
    return 0


def is_conversational(prompt) -> bool:
    """A message-list prompt ([{"role": ..., "content": ...}, ...]) rather than text."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def chat_settings(trainer) -> dict:
    """The chat-template arguments a TRL GRPOTrainer renders message-list prompts with (its template, tools and
    `chat_template_kwargs`), for `encode_prompts`."""
    return {"chat_template": getattr(trainer, "chat_template", None), "tools": getattr(trainer, "tools", None) or None,
            **(getattr(trainer, "chat_template_kwargs", None) or {})}


def encode_prompts(tokenizer, prompts: Sequence, chat_template_kwargs: dict | None = None) -> list[list[int]]:
    """Token ids per prompt, exactly as TRL 1.16's GRPOTrainer encodes them: text with the tokenizer's special
    tokens; message lists with `apply_chat_template(add_generation_prompt=True, tokenize=True)` and the trainer's
    template settings (`chat_settings(trainer)`)."""
    prompts = list(prompts)
    if not prompts:
        return []
    if is_conversational(prompts[0]):
        out = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            **(chat_template_kwargs or {}))
        return [list(ids) for ids in out["input_ids"]]
    return [list(ids) for ids in tokenizer(prompts)["input_ids"]]


def strip_eos(ids: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """A sampled completion's text tokens: its ids without the EOS (or padding) it ends with."""
    ids = list(ids)
    while ids and ids[-1] in eos_ids:
        ids.pop()
    return ids


def left_pad(ids: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for rows of token ids, left-padded to the longest row."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _accepts(model, name: str) -> bool:
    params = inspect.signature(model.forward).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def batch_inputs(model, rows: Sequence[Sequence[int]], pad: int, device=None) -> dict[str, torch.Tensor]:
    """Forward-pass inputs for rows of token ids: left-padded `input_ids` and `attention_mask` on the model's
    device, and `position_ids` that skip the padding where the model's forward takes them."""
    device = device if device is not None else next(model.parameters()).device
    input_ids, attention_mask = left_pad(rows, pad, device)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if _accepts(model, "position_ids"):
        inputs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return inputs
