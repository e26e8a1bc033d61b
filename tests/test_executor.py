"""The run executor: serial, the local process pool and submitit (its local cluster) give the same records; a
failing run leaves the others' records and names itself; a study's grid runs through it."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from alignlab import AlignlabError
from alignlab.runs.executor import EXECUTORS, Run, executing, run_grid


def draw(out: str, name: str, seed: int) -> None:
    """A run: draws from its own seed (and from torch's generator, seeded by the run) and writes its record."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    record = {"name": name, "seed": seed, "pid": os.getpid(), "threads": torch.get_num_threads(),
              "x": [rng.random() for _ in range(5)], "t": torch.randn(3).tolist()}
    Path(out, f"{name}.json").write_text(json.dumps(record))


def fail(out: str, name: str, seed: int) -> None:
    raise ValueError(f"run {name} broke on purpose")


def _grid(out: Path, executor: str, fn=draw) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    runs = [Run(f"r{i}", fn, (str(out), f"r{i}", i)) for i in range(4)]
    with executing(executor, workers=2):
        run_grid([runs[:1], runs[1:]], out)
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


@pytest.mark.parametrize("executor", ["local", "submitit"])
def test_every_executor_writes_the_serial_records(executor, tmp_path, monkeypatch):
    if executor == "submitit":
        pytest.importorskip("submitit")
        os.environ["ALIGNLAB_SUBMITIT"] = json.dumps({"cluster": "local", "timeout_min": 5})
        # submitit's job process finds `draw` by its module, as a cluster job would find an installed package
        here = str(Path(__file__).parent)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    try:
        serial = _grid(tmp_path / "serial", "serial")
        other = _grid(tmp_path / executor, executor)
    finally:
        os.environ.pop("ALIGNLAB_SUBMITIT", None)
    assert sorted(serial) == sorted(other) == ["r0", "r1", "r2", "r3"]
    for name in serial:
        assert {k: v for k, v in serial[name].items() if k not in ("pid", "threads")} == \
            {k: v for k, v in other[name].items() if k not in ("pid", "threads")}
    # the runs really ran elsewhere, one torch thread each
    assert {r["pid"] for r in other.values()} != {os.getpid()}
    assert {r["threads"] for r in other.values()} == {1}
    if executor == "local":
        assert len({r["pid"] for r in other.values()}) <= 2  # one pool of two for both waves
        assert (tmp_path / executor / "logs" / "r2.log").exists()


def test_a_failing_run_keeps_the_others_and_names_itself(tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    runs = [Run(f"r{i}", fail if i == 1 else draw, (str(out), f"r{i}", i)) for i in range(3)]
    with executing("local", workers=2), pytest.raises(AlignlabError, match=r"run r1 failed \(1 of 3 runs\)"):
        run_grid([runs], out)
    assert sorted(p.stem for p in out.glob("*.json")) == ["r0", "r2"]
    assert "broke on purpose" in (out / "logs" / "r1.log").read_text()  # the traceback is in the run's log


def test_unknown_executor_is_one_line(tmp_path):
    with pytest.raises(AlignlabError, match="--executor"), executing("nope"):
        pass
    assert set(EXECUTORS) >= {"serial", "local", "submitit"}


@pytest.mark.slow
def test_a_study_grid_gives_the_same_records_serial_and_pooled(tmp_path, hacky_organism):
    """The reward-hacking smoke study, two arms: the local pool writes what the serial run writes."""
    from alignlab.studies import run_study

    common = {"preset": "smoke", "overrides": {"arms": ["none", "oracle"]}, "organism": hacky_organism}
    serial = run_study("reward-hacking", tmp_path / "serial", executor="serial", **common)
    pooled = run_study("reward-hacking", tmp_path / "pooled", executor="local", workers=2, **common)
    assert serial["records"] == pooled["records"]
    assert len(pooled["records"]) == 2
