"""One GRPO step with a live-policy ProbeReward ÷ one plain TRL GRPO step (grader reward only), same model and
batch, measured side by side in one run (alternating rounds, median). Target from the study issue: ≤ 1.05.

    .venv/bin/python bench/grpo_probe_reward.py [--organism runs/reward-hacker] [--steps 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time

os.environ.setdefault("ALIGNLAB_QUIET", "1")

import numpy as np

from alignlab.envs import HARNESS_OVERRIDE, TaskConfig, generate_task
from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer, load_model
from alignlab.probes import fit_logistic, harvest
from alignlab.signals import GraderReward, ProbeReward
from alignlab.train.grpo import GRPORunConfig, train_grpo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organism", default="runs/reward-hacker", help="organism dir (else a random tiny model)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    tasks = [generate_task(rng, TaskConfig()) for _ in range(400)]
    if os.path.isdir(args.organism):
        base, tokenizer = load_model(args.organism)
        source = args.organism
    else:
        tokenizer = build_tokenizer([t.prompt + t.solution for t in tasks])
        base, source = build_tiny_model(TinyModelConfig(), tokenizer), "random-init tiny model"
    layer = base.config.num_hidden_layers - 2
    pairs = [(t.prompt, c) for t in tasks[:100] for c in (t.solution, HARNESS_OVERRIDE)]
    X = harvest(base, tokenizer, pairs, layers=[layer])[layer].numpy()
    probe = fit_logistic(X, np.arange(len(pairs)) % 2, metadata={"layer": layer, "position": "completion"})
    cfg = GRPORunConfig(steps=args.steps)
    times: dict[str, list[float]] = {"plain": [], "probe_reward": []}
    for _ in range(args.rounds):
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
            times[arm].append((time.perf_counter() - started[0]) / args.steps)
    plain, probed = statistics.median(times["plain"]), statistics.median(times["probe_reward"])
    print(f"model: {source}; batch {cfg.prompts_per_step} prompts x {cfg.num_generations} generations, "
          f"≤{cfg.max_completion_length} tokens; {args.rounds} rounds x {args.steps} steps")
    print(f"plain GRPO step        {plain * 1000:8.0f} ms")
    print(f"GRPO + ProbeReward     {probed * 1000:8.0f} ms")
    print(f"ratio                  {probed / plain:8.3f}   (target ≤ 1.05)")


if __name__ == "__main__":
    main()
