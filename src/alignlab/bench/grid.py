"""Grids at speed: a study's runs per hour, in series vs the local process pool (one torch thread per worker),
side by side in one run (the two alternate, medians), and how wall time grows with the number of runs and with the
policy's size.

    python bench/grid.py [--organism runs/reward-hacker] [--quick]

The runs/hour row times the probe frontier's main group (its six methods × one seed) as a whole study, probe
fitting and start measurement included, so the ratio is what a user sees, not the pool's best case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from alignlab.bench.common import print_result, row
from alignlab.runs.executor import cores
from alignlab.studies import run_study

SIZES = ("d128x4", "d256x4", "d512x8")


def _organism(organism: str, tmp: Path) -> Path:
    """The given organism, else a smoke one built here (seconds)."""
    if (Path(organism) / "organism.json").exists():
        return Path(organism)
    from alignlab.organisms import build_organism

    build_organism("reward-hacker", tmp / "organism", smoke=True, seed=3)
    return tmp / "organism"


def _frontier(out: Path, organism: Path, executor: str, steps: int) -> float:
    t0 = time.perf_counter()
    run_study("probe-frontier", out, preset="quick", organism=organism, executor=executor,
              overrides={"base": {"grpo": {"steps": steps}, "checkpoints": 1}, "eval_tasks": 32,
                         "probe_data": {"n_tasks": 150}})
    return time.perf_counter() - t0


def _scaling(out: Path, organism: Path, executor: str, n: int) -> float:
    """`n` runs of the reward-hacking study's `none` arm (n seeds), a short GRPO each (the size axis is below)."""
    t0 = time.perf_counter()
    run_study("reward-hacking", out, preset="smoke", organism=organism, executor=executor,
              overrides={"arms": ["none"], "seeds": list(range(n)), "grpo": {"steps": 4}})
    return time.perf_counter() - t0


def _step_by_size(size: str) -> float:
    """Seconds per alignlab GRPO step of a random-init tiny Llama of `size` (8×8 rollouts ≤ 48 tokens)."""
    from alignlab.bench import grpo_step
    from alignlab.models import build_tiny_model
    from alignlab.models.tiny import size_config
    from alignlab.signals import GraderReward
    from alignlab.train.grpo import GRPORunConfig, train_grpo

    _, tokenizer, tasks, _, _ = grpo_step._setup("no-organism")
    model = build_tiny_model(size_config(size), tokenizer)
    t0 = time.perf_counter()
    train_grpo(model, tokenizer, tasks, [GraderReward(tasks)], GRPORunConfig(steps=4))
    return (time.perf_counter() - t0) / 4


def run(quick: bool = True, organism: str = "runs/reward-hacker") -> dict:
    rounds = 1 if quick else 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        org = _organism(organism, tmp)
        steps = 8 if quick else 16
        walls: dict[str, list[float]] = {"serial": [], "local": []}
        for r in range(rounds):
            for executor in ("serial", "local") if r % 2 == 0 else ("local", "serial"):
                walls[executor].append(_frontier(tmp / f"frontier-{executor}-{r}", org, executor, steps))
        serial, local = statistics.median(walls["serial"]), statistics.median(walls["local"])
        per_hour = {k: 6 * 3600 / statistics.median(v) for k, v in walls.items()}
        rows.append(row("frontier main group: runs/hour, local pool ÷ serial", serial / local, 1.8,
                        f"serial {per_hour['serial']:.0f}/h ({serial:.0f} s), pool {per_hour['local']:.0f}/h "
                        f"({local:.0f} s); 6 runs × {steps} GRPO steps; {cores()} cores; {rounds} round(s)",
                        higher_is_better=True))
        for n in (1, 2, 4, 8) if quick else (1, 2, 4, 8, 16):
            t = {ex: _scaling(tmp / f"scale-{ex}-{n}", org, ex, n) for ex in ("serial", "local")}
            rows.append(row(f"{n} run(s): wall, serial", t["serial"], None, "reward-hacking smoke, `none` × n seeds",
                            unit="s"))
            rows.append(row(f"{n} run(s): wall, local pool", t["local"], None,
                            f"pool ÷ serial {t['local'] / t['serial']:.2f}", unit="s"))
        for size in SIZES[:2] if quick else SIZES:
            rows.append(row(f"policy {size}: seconds per GRPO step", _step_by_size(size), None,
                            "random-init tiny Llama, 8×8 rollouts ≤ 48 tokens", unit="s"))
    return {"name": "grids at speed: runs per hour and scaling (docs/scale_out.md)", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--organism", default="runs/reward-hacker")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("ALIGNLAB_QUIET", "1")
    print_result(run(args.quick, args.organism))


if __name__ == "__main__":
    main()
