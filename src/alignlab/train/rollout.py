"""Fast rollouts for TRL's GRPOTrainer through its own hook, `rollout_func` (TRL 1.16, experimental; pinned).

`FastRollout()` is a `rollout_func`: TRL hands it the step's prompts (already repeated `num_generations` times)
and the trainer; it samples with `models.sampling.generate_ids` (the same tokens as HF `generate` under a seed,
without its per-step overhead, with a preallocated KV cache) and returns what TRL needs. TRL keeps everything
else: the loss, the optimiser, logging and the accelerate path.

With `capture_layers`, the residual stream at those layers rides on the rollout: every completion token's
activation is recorded as the token is fed back through the model, and handed to the reward functions as the
column `rollout_activations` (one `{layer: [T, D] tensor}` per completion). A live-policy `ProbeReward` reads
its score from there instead of running a second forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from trl.models.utils import unwrap_model_for_generation

from alignlab import AlignlabError
from alignlab.models.batch import chat_settings, encode_prompts
from alignlab.models.sampling import generate_ids

ROLLOUT_ACTIVATIONS = "rollout_activations"

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we pin TRL and test the hook; its warning is noise here


class FastRollout:
    """A TRL `rollout_func`. Supports what plain sampling needs (temperature, `suppress_tokens` in
    `generation_kwargs`); other sampling settings raise, rather than being silently ignored."""

    def __init__(self, capture_layers: Sequence[int] = ()):
        self.capture_layers = list(capture_layers)
        self.__name__ = "FastRollout"

    def add_layers(self, layers: Sequence[int]) -> None:
        self.capture_layers = sorted(set(self.capture_layers) | set(layers))

    @staticmethod
    def _check(trainer) -> list[int]:
        args = trainer.args
        unsupported = {"top_k": (trainer.top_k not in (0, None)), "top_p": trainer.top_p != 1.0,
                       "min_p": trainer.min_p not in (None, 0.0),
                       "repetition_penalty": trainer.repetition_penalty != 1.0, "use_vllm": args.use_vllm}
        extra = set(args.generation_kwargs or {}) - {"suppress_tokens"}
        bad = [k for k, v in unsupported.items() if v] + sorted(extra)
        if bad:
            raise AlignlabError(f"FastRollout does not support GRPO setting(s) {bad}: use TRL's own generation")
        return list((args.generation_kwargs or {}).get("suppress_tokens") or [])

    def __call__(self, prompts: list, trainer) -> dict:
        suppress = self._check(trainer)
        tokenizer = trainer.processing_class
        prompt_ids = encode_prompts(tokenizer, prompts, chat_settings(trainer))  # as TRL's own generation
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs
                                         ) as model:
            out = generate_ids(model, prompt_ids, max_new_tokens=trainer.max_completion_length,
                               eos_token_ids=trainer.eos_token_ids, pad_token_id=tokenizer.pad_token_id,
                               temperature=trainer.temperature, suppress_ids=suppress,
                               capture_layers=self.capture_layers)
        result = {"prompt_ids": prompt_ids, "completion_ids": out.completion_ids, "logprobs": out.logprobs}
        if self.capture_layers:
            result[ROLLOUT_ACTIVATIONS] = [{layer: out.activations[layer][i] for layer in out.activations}
                                           for i in range(len(prompt_ids))]
        return result
