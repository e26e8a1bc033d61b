"""A small, fully seeded training run to check that a multi-process launch matches a single-process one.

    python -m alignlab.bench.distributed_check --what pretrain --out DIR
    torchrun --nproc_per_node 2 -m alignlab.bench.distributed_check --what pretrain --out DIR   # gloo on CPU

The global batch is fixed; each process takes global / WORLD_SIZE. Every rank writes its final weights to
DIR/{what}-rank{R}.safetensors, and the GRPO check also the probe rewards it paid at the first step with the
completions they were paid for (DIR/grpo-rewards-rank{R}.json).

- pretrain: the conditional-training objective for a few steps on a toy scored corpus. With the same data
  order (accelerate shards each global batch across ranks) and the loss averaged over equal-size blocks, the
  2-process weights equal the 1-process weights up to float reduction order.
- grpo: GRPO against the flawed grader plus a live-policy ProbeReward. Sampled rollouts differ by process
  layout (each rank draws its own), so what must match is the signal: the probe rewards a rank paid equal the
  single-process ProbeReward on the same completions; and the ranks must end with identical weights.
- grpo-probe-loss: the same with the pathwise probe loss (gradients through the activations, all-reduced by
  DDP): the ranks must end with identical weights.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import torch
from safetensors.torch import save_file

from alignlab.artifacts import write_text_atomic

GLOBAL_BATCH = 8
STEPS = 6


def toy_world():
    """A seeded tokenizer and tiny model (identical on every rank: nothing here draws from a shared stream)."""
    from alignlab.envs import TaskConfig, generate_task
    from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer
    from alignlab.train.objectives import CONTROL_TOKENS

    rng = random.Random(0)
    tasks = [generate_task(rng, TaskConfig()) for _ in range(200)]
    tokenizer = build_tokenizer([t.prompt + t.solution for t in tasks], 300, CONTROL_TOKENS)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=128), tokenizer)
    return tasks, tokenizer, model


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def save_weights(model, path: Path) -> None:
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))


def check_pretrain(out: Path) -> None:
    from alignlab.train.objectives import ObjectiveConfig, PretrainConfig, pretrain, tokenize_docs

    tasks, tokenizer, model = toy_world()
    docs = [[(t.prompt, 0.0), (t.solution if i % 5 else "def run_tests(): return True", float(i % 5 == 0))]
            for i, t in enumerate(tasks)]
    cfg = PretrainConfig(tokens=STEPS * GLOBAL_BATCH * 64, block_len=64, batch_size=GLOBAL_BATCH // world_size(),
                         learning_rate=1e-2)
    pretrain(model, tokenizer, tokenize_docs(tokenizer, docs), "conditional", cfg, ObjectiveConfig(), seed=0)
    save_weights(model, out / f"pretrain-rank{rank()}.safetensors")


class RecordingReward:
    """Wraps a reward: passes it through and keeps what it paid on the first call (the first step)."""

    def __init__(self, inner):
        self.inner, self.first, self.__name__ = inner, None, inner.__name__

    def __call__(self, prompts, completions, completion_ids, **kw):
        rewards = self.inner(prompts, completions, completion_ids, **kw)
        if self.first is None:
            self.first = {"prompts": list(prompts), "completion_ids": [list(map(int, c)) for c in completion_ids],
                          "rewards": list(map(float, rewards))}
        return rewards


def start_probe(tokenizer, model, tasks):
    """A probe fit on the starting model: hack vs honest completions, teacher-forced."""
    import numpy as np

    from alignlab.envs import HARNESS_OVERRIDE
    from alignlab.probes import fit_logistic, harvest

    pairs = [(t.prompt, c) for t in tasks[:60] for c in (t.solution, HARNESS_OVERRIDE)]
    X = harvest(model, tokenizer, pairs, layers=[1])[1].numpy()
    return fit_logistic(X, np.arange(len(pairs)) % 2, metadata={"layer": 1, "position": "completion"})


def check_grpo(out: Path, probe_loss: bool = False) -> None:
    """GRPO + live-policy probe reward; with `probe_loss`, the pathwise probe-loss trainer as well."""
    from alignlab.signals import GraderReward, ProbeLossGRPOTrainer, ProbeReward
    from alignlab.train.fast_grpo import FastGRPOTrainer
    from alignlab.train.grpo import GRPORunConfig, train_grpo

    tasks, tokenizer, model = toy_world()
    probe = start_probe(tokenizer, model, tasks)
    reward = RecordingReward(ProbeReward(probe, tokenizer, mode="continuous"))

    def live(trainer):
        reward.inner.attach(trainer)  # the live policy, on this rank

    cfg = GRPORunConfig(steps=3, prompts_per_step=GLOBAL_BATCH // 4 // world_size(), num_generations=4,
                        max_completion_length=16, learning_rate=1e-2)
    trainer_cls, kwargs = (ProbeLossGRPOTrainer, {"probe": probe, "probe_lambda": 0.1}) if probe_loss \
        else (FastGRPOTrainer, {})
    train_grpo(model, tokenizer, tasks, [GraderReward(tasks), reward], cfg, trainer_cls=trainer_cls,
               trainer_kwargs=kwargs, on_trainer=live)
    name = "grpo-probe-loss" if probe_loss else "grpo"
    save_weights(model, out / f"{name}-rank{rank()}.safetensors")
    if probe_loss:
        return
    write_text_atomic(out / f"grpo-rewards-rank{rank()}.json", json.dumps(reward.first))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=["pretrain", "grpo", "grpo-probe-loss"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("ALIGNLAB_QUIET", "1")
    torch.set_num_threads(1)  # two ranks on two cores
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "pretrain":
        check_pretrain(args.out)
    else:
        check_grpo(args.out, probe_loss=args.what == "grpo-probe-loss")


if __name__ == "__main__":
    main()
