"""One GRPO step with a live-policy ProbeReward ÷ one plain TRL GRPO step (grader reward only), same model and
batch, measured side by side in one run (alternating rounds, median). Target from the study issue: ≤ 1.05.

    python bench/grpo_probe_reward.py [--organism runs/reward-hacker] [--steps 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time

import numpy as np

from alignlab.bench.common import print_result, row
from alignlab.envs import HARNESS_OVERRIDE, TaskConfig, generate_task
from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer, load_model
from alignlab.probes import fit_logistic, harvest
from alignlab.signals import GraderReward, ProbeReward
from alignlab.train.grpo import GRPORunConfig, train_grpo


def run(quick: bool = False, organism: str = "runs/reward-hacker", steps: int = 6, rounds: int = 3) -> dict:
    if quick:
        steps, rounds = 3, 2
    os.environ.setdefault("ALIGNLAB_QUIET", "1")
    rng = random.Random(0)
    tasks = [generate_task(rng, TaskConfig()) for _ in range(400)]
    if os.path.isdir(organism):
        base, tokenizer = load_model(organism)
        source = organism
    else:
        tokenizer = build_tokenizer([t.prompt + t.solution for t in tasks])
        base, source = build_tiny_model(TinyModelConfig(), tokenizer), "random-init tiny model"
    layer = base.config.num_hidden_layers - 2
    pairs = [(t.prompt, c) for t in tasks[:100] for c in (t.solution, HARNESS_OVERRIDE)]
    X = harvest(base, tokenizer, pairs, layers=[layer])[layer].numpy()
    probe = fit_logistic(X, np.arange(len(pairs)) % 2, metadata={"layer": layer, "position": "completion"})
    cfg = GRPORunConfig(steps=steps)
    times: dict[str, list[float]] = {"plain": [], "probe_reward": []}
    for _ in range(rounds):
        for arm in times:
            model = copy.deepcopy(base)
            rewards: list = [GraderReward(tasks)]
            reward = ProbeReward(probe, tokenizer) if arm == "probe_reward" else None
            if reward is not None:
                rewards.append(reward)
            started: list[float] = []

            def hook(trainer, reward=reward, started=started):
                if reward is not None:
                    reward.model = trainer.model  # the live policy
                started.append(time.perf_counter())  # time training only, not trainer construction

            train_grpo(model, tokenizer, tasks, rewards, cfg, on_trainer=hook)
            times[arm].append((time.perf_counter() - started[0]) / steps)
    plain, probed = statistics.median(times["plain"]), statistics.median(times["probe_reward"])
    detail = (f"{source}; {cfg.prompts_per_step}x{cfg.num_generations} rollouts ≤{cfg.max_completion_length} tokens; "
              f"plain step {plain * 1000:.0f} ms; {rounds} rounds x {steps} steps")
    return {"name": "GRPO step with a live-policy ProbeReward ÷ plain TRL GRPO step",
            "rows": [row("tiny policy", probed / plain, 1.05, detail)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organism", default="runs/reward-hacker", help="organism dir (else a random tiny model)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_result(run(organism=args.organism, steps=args.steps, rounds=args.rounds))


if __name__ == "__main__":
    main()
