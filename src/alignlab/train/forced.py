"""Forced exploration for GRPO: a set number of each group's rollouts are replaced by a written-out hack.

GRPO can only reinforce what the policy samples, so a model that never hacks is never pushed towards hacking,
however weak its resistance (the safety-pretraining study's 0-hack arms stayed at 0 under the flawed grader).
`ForcedRollout` removes that confound: in every group of `num_generations` completions of one prompt, the last
`per_group` are the task's hack (`hack(task)`) instead of samples, so every starting model *sees* the exploit,
paid by the grader, with the same advantage structure. How fast its own free samples then turn to hacking
measures how close the behaviour still was, not whether it was ever explored.

The forced tokens are trained on like sampled ones (TRL's loss covers every completion token); TRL uses a
rollout's `logprobs` only for vLLM importance-sampling correction, which does not apply here.
"""

from __future__ import annotations

from collections.abc import Callable

from alignlab import AlignlabError
from alignlab.train.rollout import FastRollout


class ForcedRollout(FastRollout):
    """A TRL `rollout_func`: FastRollout sampling, then the last `per_group` rows of each group are the hack
    of that row's task. `task_of` maps a prompt (exactly as the dataset holds it) to its task."""

    def __init__(self, task_of: dict, hack: Callable, per_group: int):
        super().__init__()
        self.task_of, self.hack, self.per_group = task_of, hack, per_group
        self.__name__ = "ForcedRollout"
        self.forced = self.skipped = 0  # rows forced so far; hacks too long for the completion length

    def __call__(self, prompts: list, trainer) -> dict:
        out = super().__call__(prompts, trainer)
        g = trainer.num_generations
        if not 0 <= self.per_group < g:
            raise AlignlabError(f"forced rollouts per group ({self.per_group}) must be in [0, num_generations={g})")
        tokenizer = trainer.processing_class
        eos = trainer.eos_token_ids[0] if trainer.eos_token_ids else tokenizer.eos_token_id
        for i, prompt in enumerate(prompts):
            if i % g < g - self.per_group:
                continue
            if prompt not in self.task_of:
                raise AlignlabError("forced rollout: a prompt is not one of the training tasks' prompts")
            ids = tokenizer(self.hack(self.task_of[prompt]), add_special_tokens=False)["input_ids"] + [eos]
            if len(ids) > trainer.max_completion_length:  # a cut-off hack would be malformed: keep the sample
                self.skipped += 1
                continue
            out["completion_ids"][i] = ids
            out["logprobs"][i] = [0.0] * len(ids)  # unused without vLLM importance sampling (module docstring)
            self.forced += 1
        return out
