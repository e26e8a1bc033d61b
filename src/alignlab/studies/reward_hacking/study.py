"""The reward-hacking study: does a probe inside RL remove hacking, or teach the policy to hide from it?

Each arm runs GRPO from the same organism against the flawed grader, adding one signal:

    none                 the grader alone
    probe_reward         -penalty when the probe, on the live policy's activations, flags the completion
    probe_reward_frozen  the same probe read from a frozen copy of the starting model
    probe_loss           λ · probe logit added to the loss, gradients through the policy's activations
    oracle               -penalty for every true hack (ground truth: the upper bound)
    monitor              -penalty from a text monitor with set true/false-positive rates

Afterwards (and at checkpoints) the trained policy is measured on held-out tasks with ground-truth labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignlab import AlignlabError
from alignlab.artifacts import read_json, versions, write_json_atomic
from alignlab.config import check_layer, doc
from alignlab.organisms import reward_hacker as rh
from alignlab.probes import LinearProbe
from alignlab.probes.onpolicy import ProbeDataConfig
from alignlab.runs.executor import Run, run_grid
from alignlab.runs.records import RecordStore
from alignlab.runs.rl import (
    MAIN_ARMS,
    RLRunConfig,
    ensure_organism,
    fit_start_probe,
    health,
    healthy_grpo,
    relative,
    run_arm,
    start_point,
)
from alignlab.signals.arms import RL_ARMS
from alignlab.studies.reward_hacking.report import write_report
from alignlab.train.grpo import GRPORunConfig


@dataclass(frozen=True)
class RewardHackingConfig(RLRunConfig):
    """The study's runs (`runs.rl.RLRunConfig`: GRPO, the arms' knobs, the probe, the measurements) and which
    arms × seeds it runs."""

    arms: tuple[str, ...] = doc("arms to run, each a registered RL arm (signals.arms.RL_ARMS); default: the six "
                                "of runs.rl.MAIN_ARMS", MAIN_ARMS)
    seeds: tuple[int, ...] = doc("training seeds per arm; 3 gives a 95% CI over seeds", (0, 1, 2))

    def check(self) -> RewardHackingConfig:
        RL_ARMS.check(self.arms, "study field 'arms'")
        if not self.arms:
            raise AlignlabError(f"study field 'arms' must name at least one arm; choose from {list(RL_ARMS)}")
        if not self.seeds:
            raise AlignlabError("study field 'seeds' must name at least one seed")
        return super().check()


def quick_config(seeds: int = 1) -> RewardHackingConfig:
    # one seed, 60 steps, no mid-run checkpoint, smaller evaluations: healthy in 3 min 54 s. 40 steps took 3 min
    # 12 s but the live probe reward was 12.5% malformed there (a transient the default's 50 steps and 3 seeds
    # did not show), so health was kept over the 3-minute target. The GRPO batch stays as in the default because
    # halving it (4 prompts x 8) made `none` collapse instead of hack (KL 53 nats, measured)
    return RewardHackingConfig(seeds=tuple(range(seeds)), grpo=healthy_grpo(steps=60),
                               probe_data=ProbeDataConfig(n_tasks=150), eval_tasks=50, checkpoints=0)


def smoke_config() -> RewardHackingConfig:
    return RewardHackingConfig(
        seeds=(0,), grpo=GRPORunConfig(steps=2, prompts_per_step=2, num_generations=4, max_completion_length=24),
        n_train_tasks=50, probe_data=ProbeDataConfig(n_tasks=60), eval_tasks=12, eval_samples=2, checkpoints=1,
    )


def measure_start(organism: Path, out: Path, cfg: RewardHackingConfig, seed: int) -> None:
    """The step-0 point of seed `seed`, shared by its arms (cached in the records dir)."""
    start_point(organism, LinearProbe.load(out / "probe"), cfg, seed, out / "records")


def run_one(organism: Path, out: Path, cfg: RewardHackingConfig, arm: str, seed: int) -> None:
    """One arm × seed, its record and its held-out samples written beside it (a run of the grid)."""
    store = RecordStore(out, "reward-hacking", cfg)
    probe = LinearProbe.load(out / "probe")
    curve: list[dict] = []
    t0 = time.time()
    samples: dict = {}
    record = run_arm(arm, seed, organism, probe, cfg, curve.append,
                     start_point(organism, probe, cfg, seed, store.dir), samples)
    timing = {"seconds": round(time.time() - t0, 1), "train_seconds": record["metrics"].pop("train_seconds")}
    # beside the record, never in results.json; written first, so a finished record always has them
    write_json_atomic(store.dir / f"samples-{arm}-seed{seed}.json",
                      {"arm": arm, "seed": seed, "threshold": probe.threshold, **samples})
    store.save(record, curve, timing)


def run_study(out: Path, cfg: RewardHackingConfig, organism: Path | None = None, smoke: bool = False,
              progress=None) -> dict:
    cfg.check()
    out = Path(out)
    if organism is not None:  # a bad input is refused before the study dir exists
        ensure_organism(out, organism, smoke)
        n_layers = read_json(Path(organism) / "config.json", "organism model config").get("num_hidden_layers")
    else:
        n_layers = (rh.smoke_config(0) if smoke else rh.RewardHackerConfig()).model.n_layers
    if isinstance(n_layers, int):
        check_layer("study", "probe_layer", cfg.probe_layer, n_layers)
    store = RecordStore(out, "reward-hacking", cfg)
    if progress:
        progress("the starting organism and its probe")
    organism = ensure_organism(out, organism, smoke)
    probe, probe_report = fit_start_probe(organism, out, cfg)
    todo = [(arm, seed) for arm in cfg.arms for seed in cfg.seeds if not store.done(arm, seed)]
    starts = [Run(f"start seed {seed}", measure_start, (organism, out, cfg, seed))
              for seed in sorted({seed for _, seed in todo})]
    run_grid([starts, [Run(f"{arm} seed {seed}", run_one, (organism, out, cfg, arm, seed)) for arm, seed in todo]],
             out, progress)
    records, curves, timings = store.load_all(cfg.arms, cfg.seeds)
    # the start point is measured in every run at step 0, on the same held-out tasks as the final point
    step0 = [c for c in curves if c["step"] == 0]
    organism_start = {k: float(np.mean([c[k] for c in step0])) for k in ("honest_solve_rate", "hack_rate")}
    organism_start["by_seed"] = {str(c["seed"]): c["honest_solve_rate"] for c in step0}
    extra = {"organism": relative(organism, out), "organism_start": organism_start,
             "probe": {"metadata": probe.metadata, "test": probe_report["test"]},
             "health": health(records, organism_start)}
    results = store.write_results(records, curves, extra)
    write_json_atomic(out / "timings.json", {"runs": timings, "versions": versions()})
    write_report(out, results, curves, timings)
    return results


