"""The safety-pretraining study: align during pretraining (Korbak et al. 2023; Maini et al. 2025) or after it?

Every arm trains the same tiny model from scratch on the same scored documents for the same token budget:

    <objective>            the objective for the whole budget (pretraining with feedback)
    <objective>@finetune   MLE for the first `finetune_switch` of the budget, then the objective (fine-tuning)

measured by the pretraining runner (`runs/pretraining.py`): misalignment of samples (unconditional and after
adversarial prompts), capability (held-out loss, KL from the MLE model's samples, honest solving in the hacking
world), throughput, and in the hacking world survival under the flawed-grader RL.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from alignlab import AlignlabError
from alignlab.artifacts import versions, write_json_atomic
from alignlab.runs.executor import Run, run_grid
from alignlab.runs.pretraining import TASKS, PretrainingRun, SafetyPretrainingConfig
from alignlab.runs.records import RecordStore
from alignlab.studies.safety_pretraining.report import write_report

__all__ = ["TASKS", "SafetyPretrainingConfig", "quick_overrides", "run_study", "smoke_overrides", "task_defaults"]


def task_defaults(task: str) -> dict:
    """Per-world defaults (an override dict); documented in docs/safety_pretraining.md."""
    if task == "reward-hacking":
        return {"task": task, "vocab_size": 512, "pretrain": {"tokens": 1_200_000},
                "objective": {"rwr_beta": 0.5, "awr_beta": 0.5},
                "eval": {"max_new_tokens": 48, "groups": 40, "checkpoint_groups": 10}}
    return {"task": task}



def quick_overrides(task: str) -> dict:
    tokens = 400_000 if task == "pep8" else 600_000
    groups = 4 if task == "pep8" else 20
    return {"pretrain": {"tokens": tokens}, "checkpoints": [0.5], "eval": {"groups": groups, "kl_samples": 50},
            "rl": {"steps": 15}, "rl_eval_tasks": 30}



def smoke_overrides(task: str) -> dict:
    return {"objectives": ["mle", "filter", "conditional", "unlikelihood", "rwr", "awr", "tags", "repair"],
            "finetune": ["conditional"],
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_len": 64},
            "vocab_size": 300, "pretrain": {"tokens": 64 * 8 * 6, "block_len": 64, "batch_size": 8},
            "checkpoints": [0.5],
            "eval": {"groups": 1, "max_new_tokens": 24, "heldout_docs": 10, "kl_samples": 6, "checkpoint_groups": 1},
            "pep8": {"max_files": 8, "max_doc_lines": 8, "held_out_fraction": 0.5}, "hacking": {"n_docs": 300},
            "rl": {"steps": 2, "prompts_per_step": 2, "num_generations": 4, "max_completion_length": 16},
            "rl_checkpoint_every": 1, "rl_eval_tasks": 4}



_RUNS: dict = {}  # study dir -> its PretrainingRun (world, tokenizer, data), built once per process


def run_one(out: Path, cfg: SafetyPretrainingConfig, arm: str, seed: int) -> None:
    """One objective × seed, its record and samples written (a run of the grid)."""
    study = _RUNS.get(str(out)) or _RUNS.setdefault(str(out), PretrainingRun(out, cfg))
    store = RecordStore(out, "safety-pretraining", cfg)
    curve: list[dict] = []
    t0 = time.time()
    torch.manual_seed(seed)
    samples: list[dict] = []
    record, clock = study.run_arm(arm, seed, curve.append, samples)
    # beside the record (not in results.json), written first so a finished record always has them
    write_json_atomic(store.dir / f"samples-{arm}-seed{seed}.json", {"arm": arm, "seed": seed, "samples": samples})
    store.save(record, curve, {"seconds": round(time.time() - t0, 1), **clock})


def run_study(out: Path, cfg: SafetyPretrainingConfig, progress=None) -> dict:
    cfg.check()
    if cfg.model.max_len < cfg.pretrain.block_len:
        raise AlignlabError("study field 'model.max_len' must be at least 'pretrain.block_len'")
    out = Path(out)
    store = RecordStore(out, "safety-pretraining", cfg)
    arms = sorted(cfg.arms, key=lambda a: a != "mle")  # MLE first: its samples are every arm's KL reference
    todo = [(arm, seed) for seed in cfg.seeds for arm in arms if not store.done(arm, seed)]
    run_grid([[Run(f"{arm} seed {seed}", run_one, (out, cfg, arm, seed)) for arm, seed in todo if arm == "mle"],
              [Run(f"{arm} seed {seed}", run_one, (out, cfg, arm, seed)) for arm, seed in todo if arm != "mle"]],
             out, progress)
    study = _RUNS.get(str(out)) or PretrainingRun(out, cfg)
    records, curves, timings = store.load_all(arms, cfg.seeds)
    results = store.write_results(records, curves, {"task": cfg.task, "world": study.world.provenance()})
    write_json_atomic(out / "timings.json", {"runs": timings, "versions": versions()})
    write_report(out, results, curves, timings)
    return results

