"""Wall time of each study's `--smoke` run (or `--quick` run), each in a fresh temporary directory.

Absolute seconds drift with the machine; they are here so a change that makes a study much slower shows up.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from alignlab.bench.common import print_result, row
from alignlab.studies import STUDIES, run_study

# every registered study, and the safety-pretraining study in both its worlds
EXTRA_RUNS = {"safety-pretraining": [{"task": "pep8"}, {"task": "reward-hacking"}]}


def run(quick: bool = True, size: str = "smoke") -> dict:
    """`size`: a preset every study has, "smoke" (seconds to a minute each); "quick" where a study has one."""
    os.environ.setdefault("ALIGNLAB_QUIET", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in STUDIES:
            if size not in STUDIES[name].presets:
                continue
            for options in EXTRA_RUNS.get(name, [{}]):
                label = " ".join([name, *(f"--{k} {v}" for k, v in options.items())])
                start = time.perf_counter()
                try:
                    run_study(name, Path(tmp) / label.replace(" ", "_"), preset=size, **options)
                    status = "ok"
                except Exception as err:  # a bench row says what failed and the bench goes on
                    status = f"failed: {type(err).__name__}"
                rows.append(row(f"study {label} --{size}", time.perf_counter() - start, None, status, unit="s"))
    return {"name": f"study wall times (--{size})", "rows": rows}


def main() -> None:
    print_result(run())


if __name__ == "__main__":
    main()
