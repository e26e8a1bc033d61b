"""`alignlab bench`: every benchmark side by side in one run, written to BENCHMARKS.md with the machine, the
package versions and the date."""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path

from alignlab import AlignlabError
from alignlab.artifacts import versions, write_text_atomic
from alignlab.bench.common import fmt_target, fmt_value, verdict
from alignlab.train.hardware import resolve_precision

BENCHMARKS = ("harvest", "grpo_step", "objectives", "attribution", "influence", "studies", "grid", "real_model")


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_all(names: list[str], quick: bool, organism: str, progress=print) -> list[dict]:
    from alignlab.bench import attribution, grid, grpo_step, harvest, influence, objectives, real_model, studies

    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise AlignlabError(f"unknown benchmarks {sorted(unknown)}: choose from {', '.join(BENCHMARKS)}")
    runners = {"harvest": lambda: harvest.run(quick), "grpo_step": lambda: grpo_step.run(quick, organism),
               "objectives": lambda: objectives.run(quick), "attribution": lambda: attribution.run(quick),
               "influence": lambda: influence.run(quick), "studies": lambda: studies.run(),
               "grid": lambda: grid.run(quick, organism), "real_model": lambda: real_model.run(quick)}
    results = []
    for name in names:
        progress(f"[bench] {name}")
        start = time.perf_counter()
        result = runners[name]()
        result["seconds"] = time.perf_counter() - start
        results.append(result)
    return results


def write_markdown(path: Path, results: list[dict], info: dict, quick: bool, command: str) -> None:
    v = versions()
    lines = [
        "# Benchmarks", "",
        f"Measured {datetime.date.today().isoformat()} with `{command}`{' (quick: fewer repeats)' if quick else ''}. "
        "Each ratio is measured side by side in one run (the contenders alternate, medians), so machine noise "
        "largely cancels; wall times are absolute and drift with the machine.", "",
        f"Machine: {info['platform']}, {info['processor']}, {info['cpus']} CPUs, torch threads "
        f"{info['torch_threads']}, GPU: {info['gpu'] or 'none'}.", "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in sorted(v.items())) + ".", "",
        f"Precision: GRPO in {resolve_precision('auto')} (train/hardware.py: bf16 only on a bf16 GPU), everything "
        "else fp32; a row that used another precision says so.", "",
    ]
    for result in results:
        lines += [f"## {result['name']}", "", "| case | value | target | verdict | detail |", "|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {fmt_value(r)} | {fmt_target(r)} | {verdict(r)} | {r['detail']} |"
                  for r in result["rows"]]
        lines += ["", f"({result['seconds']:.0f} s to measure)", ""]
    write_text_atomic(path, "\n".join(lines))
