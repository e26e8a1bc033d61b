"""TRL reward functions: the flawed grader, a ground-truth oracle penalty, a noisy text monitor, and a probe
penalty read from a model's activations (the live policy or a frozen copy).

Each is a callable `f(prompts, completions, completion_ids, **columns) -> list[float]`, the interface of TRL's
`GRPOTrainer(reward_funcs=[...])`; rewards from several functions are summed. Tasks are found through the
dataset column `task_id` (an index into the list of tasks given to the reward).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from alignlab import AlignlabError
from alignlab.envs import Task, flawed_reward, label
from alignlab.models.batch import batch_inputs, chat_settings, encode_prompts, pad_id, strip_eos
from alignlab.models.tap import ActivationTap, aggregate, completion_mask, find_decoder_layers, resolve_layers
from alignlab.probes.probe import LinearProbe
from alignlab.train.rollout import ROLLOUT_ACTIVATIONS, FastRollout


class _TaskReward:
    def __init__(self, tasks: Sequence[Task]):
        self.tasks = list(tasks)
        self.__name__ = type(self).__name__

    def _task(self, task_id) -> Task:
        return self.tasks[int(task_id)]


class GraderReward(_TaskReward):
    """The flawed grader: share of visible tests passed, 1.0 for a harness override. What RL optimises."""

    def __call__(self, prompts, completions, task_id, **_) -> list[float]:
        return [flawed_reward(self._task(t), c) for t, c in zip(task_id, completions, strict=True)]


class OracleReward(_TaskReward):
    """-penalty for every true hack (ground truth): the upper bound on what a detector can do."""

    def __init__(self, tasks: Sequence[Task], penalty: float = 1.0):
        super().__init__(tasks)
        self.penalty = penalty

    def __call__(self, prompts, completions, task_id, **_) -> list[float]:
        return [-self.penalty * label(self._task(t), c).is_hack for t, c in zip(task_id, completions, strict=True)]


class MonitorReward(_TaskReward):
    """A text-only monitor that flags true hacks with probability `tpr` and honest work with probability `fpr`.
    Deterministic per completion: the coin is a hash of (salt, prompt, completion), not a random draw."""

    def __init__(self, tasks: Sequence[Task], tpr: float = 0.9, fpr: float = 0.05, penalty: float = 1.0,
                 salt: str = "monitor"):
        super().__init__(tasks)
        if not (0 <= tpr <= 1 and 0 <= fpr <= 1):
            raise AlignlabError("monitor fields 'tpr' and 'fpr' must be in [0, 1]")
        self.tpr, self.fpr, self.penalty, self.salt = tpr, fpr, penalty, salt

    def _coin(self, prompt: str, completion: str) -> float:
        digest = hashlib.sha256(f"{self.salt}\0{prompt}\0{completion}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def flags(self, prompts, completions, task_id) -> list[bool]:
        out = []
        for p, c, t in zip(prompts, completions, task_id, strict=True):
            rate = self.tpr if label(self._task(t), c).is_hack else self.fpr
            out.append(self._coin(p, c) < rate)
        return out

    def __call__(self, prompts, completions, task_id, **_) -> list[float]:
        return [-self.penalty * f for f in self.flags(prompts, completions, task_id)]


class ProbeReward:
    """-penalty when a linear probe on `model`'s activations at the probe's layer flags the completion.

    `model` is the live policy (`reward.attach(trainer)` after building the trainer) or a frozen copy of the
    starting model (deep-copied *before* training). Attached to a trainer whose `rollout_func` is a
    `FastRollout`, the live policy's scores ride on the rollout: the activations recorded while sampling (column
    `rollout_activations`) are scored directly, with no second forward pass; they are the same activations (the
    tests check it). Tokens are the policy's own: `completion_ids` from TRL, the prompt encoded as TRL encodes it
    (text with special tokens; a message list through the chat template, `models.batch.encode_prompts`). The
    probe pools the completion's text tokens: the EOS that ends a sampled completion is dropped, so a completion
    scores what `harvest` gave it when the probe was fitted on its text (`models.batch`).
    `mode="flat"` pays -penalty above the probe threshold; `mode="continuous"` pays -penalty × sigmoid(score -
    threshold). The forward pass stops after the probe's layer (early exit), so a frozen copy costs layers 0..L.
    """

    def __init__(self, probe: LinearProbe, tokenizer, model=None, penalty: float = 1.0, mode: str = "flat",
                 batch_size: int = 64):
        if mode not in ("flat", "continuous"):
            raise AlignlabError(f"probe reward field 'mode' must be flat or continuous, got {mode!r}")
        if probe.metadata.get("position", "completion") != "completion":
            raise AlignlabError("probe reward needs a probe over completion tokens (position 'completion')")
        self.probe, self.tokenizer, self.model = probe, tokenizer, model
        self.penalty, self.mode, self.batch_size = penalty, mode, batch_size
        self.layer = probe.layer
        self.aggregation = probe.aggregation
        self.eos_ids = [i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None]
        self.chat_template_kwargs: dict = {}
        self.__name__ = "ProbeReward"
        self.last_scores: list[float] = []
        self.from_rollout = False

    def attach(self, trainer) -> ProbeReward:
        """Read the live policy: `trainer.model`, and the rollout's own activations where it records them."""
        self.model = trainer.model
        self.eos_ids = sorted({*self.eos_ids, *(getattr(trainer, "eos_token_ids", None) or [])})
        self.chat_template_kwargs = chat_settings(trainer)
        rollout = getattr(trainer, "rollout_func", None)
        if isinstance(rollout, FastRollout):
            self.layer = resolve_layers([self.layer], len(find_decoder_layers(self.model)))[0]
            rollout.add_layers([self.layer])
            self.from_rollout = True
        return self

    def rollout_scores(self, rollout_activations: Sequence[dict],
                       completion_ids: Sequence[Sequence[int]] | None = None) -> list[float]:
        """Scores from the rollout's recorded activations; with `completion_ids` a trailing EOS is left out, as
        in `scores` (without them every recorded position is pooled)."""
        feats = []
        for i, acts in enumerate(rollout_activations):
            x = acts[self.layer].float()
            n = len(strip_eos(completion_ids[i], self.eos_ids)) if completion_ids is not None else len(x)
            x = x[:n] if n else x[-1:]  # an empty completion: its EOS position stands in (as below)
            feats.append(aggregate(x[None], torch.ones(x[None].shape[:2], dtype=torch.bool), self.aggregation)[0])
        return self.probe.score(torch.stack(feats)).float().tolist()

    @torch.no_grad()
    def scores(self, prompts: Sequence, completion_ids: Sequence[Sequence[int]]) -> list[float]:
        if self.model is None:
            raise AlignlabError("ProbeReward.model is not set (the live policy or a frozen copy)")
        model = self.model
        was_training = model.training
        model.eval()
        out: list[float] = []
        try:
            with ActivationTap(model, [self.layer], early_exit=True) as tap:
                for start in range(0, len(prompts), self.batch_size):
                    p_ids = encode_prompts(self.tokenizer, prompts[start : start + self.batch_size],
                                           self.chat_template_kwargs)
                    # an empty completion (EOS alone) is read at its EOS, as on the rollout
                    c_ids = [strip_eos(c, self.eos_ids) or list(c)[:1]
                             for c in completion_ids[start : start + self.batch_size]]
                    inputs = batch_inputs(model, [p + c for p, c in zip(p_ids, c_ids, strict=True)],
                                          pad_id(self.tokenizer))
                    acts = tap.run(**inputs)[tap.layers[0]]
                    attn = inputs["attention_mask"]
                    mask = completion_mask(attn, [len(p) for p in p_ids])
                    empty = mask.sum(-1) == 0
                    mask[empty, -1] = attn[empty, -1].bool()  # an empty completion: score the last prompt token
                    feats = aggregate(acts.float(), mask, self.aggregation)
                    out += self.probe.score(feats).float().cpu().tolist()
        finally:
            model.train(was_training)
        return out

    def __call__(self, prompts, completions, completion_ids, **columns) -> list[float]:
        if self.from_rollout and columns.get(ROLLOUT_ACTIVATIONS) is not None:
            scores = self.rollout_scores(columns[ROLLOUT_ACTIVATIONS], completion_ids)
        else:
            scores = self.scores(prompts, completion_ids)
        self.last_scores = scores
        threshold = self.probe.threshold
        if self.mode == "flat":
            return [-self.penalty * float(s > threshold) for s in scores]
        return [-self.penalty * float(torch.sigmoid(torch.tensor(s - threshold))) for s in scores]
