"""The GRPO step: alignlab's (FastRollout, precision from the hardware, no gradient checkpointing) ÷ a plain TRL
step (TRL's defaults: `model.generate`, gradient checkpointing on) at the same precision, same model, batch and
lengths; with and without a live-policy ProbeReward. Paired rounds (the contenders alternate), medians.

Also: where a step's time goes (generation, rewards, the loss forward, backward + optimiser), and the achieved
FLOP/s (FLOPs counted by torch's FlopCounterMode over one step) against the machine's fp32 matmul FLOP/s.

    python bench/grpo_step.py [--organism runs/reward-hacker] [--steps 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import random
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
from trl import GRPOTrainer

from alignlab.bench.common import print_result, row
from alignlab.envs import HARNESS_OVERRIDE, TaskConfig, generate_task
from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer, load_model
from alignlab.probes import fit_logistic, harvest
from alignlab.signals import GraderReward, ProbeReward
from alignlab.train.fast_grpo import FastGRPOTrainer
from alignlab.train.grpo import GRPORunConfig, train_grpo
from alignlab.train.hardware import resolve_precision

PHASES = {"_generate": "generation", "_calculate_rewards": "rewards", "compute_loss": "loss forward"}


def _setup(organism: str):
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
    return base, tokenizer, tasks, probe, source


def contender(name: str, precision: str) -> GRPORunConfig:
    """'plain': TRL as it comes (its generate, gradient checkpointing on) at `precision`; 'fast': alignlab's."""
    base = GRPORunConfig(precision=precision)
    if name.startswith("plain"):
        return replace(base, fast=False, gradient_checkpointing=True)
    return base


def time_steps(base, tokenizer, tasks, probe, cfg: GRPORunConfig, with_probe: bool, phases: dict | None = None):
    """Seconds per GRPO step (training only, not trainer construction); `phases` collects per-phase seconds."""
    model = copy.deepcopy(base)
    rewards: list = [GraderReward(tasks)]
    reward = ProbeReward(probe, tokenizer) if with_probe else None
    if reward is not None:
        rewards.append(reward)
    started: list[float] = []

    def hook(trainer):
        if reward is not None:
            reward.attach(trainer)
        if phases is not None:
            for method, phase in PHASES.items():
                _time(trainer, method, phase, phases)
        started.append(time.perf_counter())

    # the plain contender is TRL's own class, not ours with fast=False
    trainer_cls = FastGRPOTrainer if cfg.fast else GRPOTrainer
    train_grpo(model, tokenizer, tasks, rewards, cfg, on_trainer=hook, trainer_cls=trainer_cls)
    return (time.perf_counter() - started[0]) / cfg.steps


def _time(obj, method: str, phase: str, into: dict) -> None:
    fn = getattr(obj, method)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[phase] += time.perf_counter() - t0

    setattr(obj, method, timed)


def step_flops(base, tokenizer, tasks, cfg: GRPORunConfig) -> float:
    """FLOPs of one GRPO step (matmuls and attention, forward and backward), counted, not estimated."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        time_steps(base, tokenizer, tasks, None, replace(cfg, steps=1), with_probe=False)
    return float(counter.get_total_flops())


def matmul_flops_per_s(n: int = 1024, repeats: int = 10) -> float:
    """The machine's fp32 matmul throughput: the physical limit a step's FLOP/s is compared with."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def profile(base, tokenizer, tasks, probe, cfg: GRPORunConfig, with_probe: bool, steps: int = 4) -> dict:
    phases: dict = collections.defaultdict(float)
    total = time_steps(base, tokenizer, tasks, probe, replace(cfg, steps=steps), with_probe, phases)
    out = {phase: phases[phase] / steps for phase in PHASES.values()}
    # generation and rewards run inside TRL's loss-input preparation, not inside compute_loss
    out["backward + optimiser + rest"] = total - sum(out.values())
    out["step"] = total
    return out


def run(quick: bool = False, organism: str = "runs/reward-hacker", steps: int = 6, rounds: int = 3) -> dict:
    if quick:
        steps, rounds = 3, 2
    os.environ.setdefault("ALIGNLAB_QUIET", "1")
    base, tokenizer, tasks, probe, source = _setup(organism)
    precision = resolve_precision("auto")
    arms = {"plain": (contender("plain", precision), False), "fast": (contender("fast", precision), False),
            "plain+probe": (contender("plain", precision), True), "fast+probe": (contender("fast", precision), True)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, (cfg, with_probe) in arms.items():
            times[name].append(time_steps(base, tokenizer, tasks, probe, replace(cfg, steps=steps), with_probe))
    med = {name: statistics.median(t) for name, t in times.items()}
    cfg = arms["fast"][0]
    shape = (f"{source}; {precision}; {cfg.prompts_per_step}x{cfg.num_generations} rollouts ≤"
             f"{cfg.max_completion_length} tokens; {rounds} rounds x {steps} steps")
    flops = step_flops(base, tokenizer, tasks, cfg)
    peak = matmul_flops_per_s()
    achieved = flops / med["fast"]
    rows = [
        row("alignlab step ÷ plain TRL step", med["fast"] / med["plain"], 0.33,
            f"fast {med['fast'] * 1000:.0f} ms, plain {med['plain'] * 1000:.0f} ms; {shape}"),
        row("same, with a live-policy ProbeReward", med["fast+probe"] / med["plain+probe"], 0.33,
            f"fast {med['fast+probe'] * 1000:.0f} ms, plain {med['plain+probe'] * 1000:.0f} ms"),
        row("live ProbeReward's own cost (fast+probe ÷ fast)", med["fast+probe"] / med["fast"], 1.05),
        row("achieved FLOP/s ÷ machine fp32 matmul FLOP/s", achieved / peak, None,
            f"{flops / 1e9:.1f} GFLOP per step at {achieved / 1e9:.1f} GFLOP/s; matmul {peak / 1e9:.0f} GFLOP/s",
            higher_is_better=True),
    ]
    return {"name": "GRPO step: alignlab ÷ plain TRL (same precision, model, batch, lengths)", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organism", default="runs/reward-hacker", help="organism dir (else a random tiny model)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print where a step's time goes, per contender")
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (profile only)")
    args = parser.parse_args()
    os.environ.setdefault("ALIGNLAB_QUIET", "1")
    if args.profile:
        base, tokenizer, tasks, probe, _ = _setup(args.organism)
        precision = resolve_precision(args.precision)
        for name in ("plain", "fast"):
            for with_probe in (False, True):
                prof = profile(base, tokenizer, tasks, probe, contender(name, precision), with_probe)
                label = f"{name}{'+probe' if with_probe else ''} ({precision})"
                print(label + ": " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in prof.items()))
        return
    print_result(run(organism=args.organism, steps=args.steps, rounds=args.rounds))


if __name__ == "__main__":
    main()
