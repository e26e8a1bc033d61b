"""`FastGRPOTrainer`: TRL's GRPOTrainer (its loss, optimiser, logging and accelerate path unchanged) with two
costs of small-model RL removed:

- rollouts through `FastRollout` (TRL's `rollout_func` hook), and
- log-probabilities computed with each prompt run once per group. GRPO scores `num_generations` completions of
  the same prompt, and TRL's forward pass runs every row's prompt again, left-padded to the batch's longest
  prompt and right-padded to its longest completion. Here each distinct prompt goes through the model once
  with a KV cache (gradients flow through the cache), the cache is copied to the rows that share it, and only
  the completion tokens (trimmed to the longest real one) are run after it. Positions are the ones TRL's
  forward uses (the column index in TRL's padded layout), so the log-probabilities are the same up to float
  rounding (the tests check 1e-5) for any decoder, RoPE or learnt positions alike.

The shared-prefix path runs only where it is exactly TRL's computation: an unwrapped, single-process text
model without gradient checkpointing (which disables the cache), multimodal inputs, MoE auxiliary losses,
logit scaling or an fp32-cast LM head. Anything else takes TRL's own `_get_per_token_logps_and_entropies` (a
private method: TRL is pinned in pyproject and the tests check the hook point still exists).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from trl import GRPOTrainer

from alignlab.train.rollout import FastRollout

_SCALING_ATTRS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                  "logits_scaling")
_MULTIMODAL = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
               "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


class FastGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with FastRollout sampling and shared-prefix log-probabilities (see the module docstring).
    `fast=False` makes it exactly TRL's GRPOTrainer (for comparisons)."""

    def __init__(self, *args, fast: bool = True, **kwargs):
        if fast:
            kwargs.setdefault("rollout_func", FastRollout())
        super().__init__(*args, **kwargs)
        self.fast = fast

    def _shared_prefix_ok(self, model, compute_aux_loss: bool, kwargs: dict) -> bool:
        # a wrapped model (DDP, FSDP, DeepSpeed) has no config: its wrapping is checked first
        if not (self.fast and self.accelerator.num_processes == 1 and model is self.accelerator.unwrap_model(model)):
            return False
        config = model.config.get_text_config()
        return (not compute_aux_loss and not self.args.gradient_checkpointing and not self.args.cast_lm_head_to_fp32
                and all(kwargs.get(k) is None for k in _MULTIMODAL)
                and all(getattr(config, a, None) is None for a in _SCALING_ATTRS))

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **kwargs):
        if not self._shared_prefix_ok(model, compute_aux_loss, kwargs):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            with self.accelerator.autocast():
                lp, ent = shared_prefix_logps(model, input_ids[start:start + batch_size],
                                              attention_mask[start:start + batch_size], logits_to_keep,
                                              self.temperature, compute_entropy)
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None


def shared_prefix_logps(model, input_ids, attention_mask, n_completion: int, temperature: float = 1.0,
                        compute_entropy: bool = False):
    """Per-token log-probabilities (and entropies) of the last `n_completion` columns of `input_ids` ([B, P + C],
    prompts left-padded, completions right-padded), each distinct prompt run once. Returns [B, C] tensors, zero
    at padding, as TRL's forward returns them."""
    width = input_ids.size(1)
    n_prompt = width - n_completion
    prompt, prompt_mask = input_ids[:, :n_prompt], attention_mask[:, :n_prompt]
    completion, completion_mask = input_ids[:, n_prompt:], attention_mask[:, n_prompt:]
    unique, row_of = torch.unique(torch.cat([prompt, prompt_mask], dim=1), dim=0, return_inverse=True)
    u_prompt, u_mask = unique[:, :n_prompt], unique[:, n_prompt:]
    # trim columns that are padding in every row: left of the longest prompt, right of the longest completion
    first = int((u_mask.sum(0) > 0).nonzero()[0]) if u_mask.any() else n_prompt - 1
    n_real = max(int(completion_mask.sum(1).max()), 1)
    positions = torch.arange(width, device=input_ids.device)  # TRL's forward: positions are column indices
    cache = DynamicCache(config=model.config)
    out = model(input_ids=u_prompt[:, first:], attention_mask=u_mask[:, first:],
                position_ids=positions[first:n_prompt].expand(len(unique), -1), past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    cache.reorder_cache(row_of)  # differentiable: each prompt's gradient sums over the rows that share it
    head = out.logits[row_of, -1:]  # predicts completion token 0
    # every real completion token is run, the last one too (its logits are unused): a tap on a decoder layer (the
    # pathwise probe loss) sees the same completion positions as in TRL's forward
    out = model(input_ids=completion[:, :n_real], attention_mask=torch.cat([prompt_mask[:, first:],
                                                                             completion_mask[:, :n_real]], dim=1),
                position_ids=positions[n_prompt:n_prompt + n_real].expand(len(row_of), -1), past_key_values=cache,
                use_cache=True)
    logits = torch.cat([head, out.logits[:, :-1]], dim=1)  # [B, n_real, V]
    logits = logits.float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    token_logps = log_probs.gather(-1, completion[:, :n_real, None])[..., 0]
    pad = (0, n_completion - n_real)
    mask = completion_mask[:, :n_real].bool()
    token_logps = torch.nn.functional.pad(token_logps.masked_fill(~mask, 0), pad)
    entropy = None
    if compute_entropy:
        entropy = -(log_probs.exp() * log_probs).sum(-1).masked_fill(~mask, 0)
        entropy = torch.nn.functional.pad(entropy, pad)
    return token_logps, entropy
