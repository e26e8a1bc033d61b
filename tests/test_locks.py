"""One writer per output: a second run into the same output is refused in one line naming the first; a lock left
by a killed run is taken over; other outputs, and readers, are never blocked."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import alignlab
from alignlab import AlignlabError
from alignlab.cli import main
from alignlab.locks import lock_path, output_lock

HOLD = """
import sys, time
from alignlab import locks
locks.command = "alignlab study reward-hacking --out " + sys.argv[1]
with locks.output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(alignlab.__file__).parents[1]), "OMP_NUM_THREADS": "1",
            "ALIGNLAB_QUIET": "1"}


@pytest.fixture
def holder(tmp_path):
    """Another process (no torch: it only locks) holding the lock on tmp_path/s."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "s")], env=_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("command", [
    "study reward-hacking --smoke --out {out}",
    "study safety-pretraining --smoke --out {out}",
    "organism build reward-hacker --smoke --out {out}",
])
def test_a_second_run_is_refused_in_one_line_naming_the_first(command, holder, tmp_path, capsys):
    out = tmp_path / "s"
    code = main(command.format(out=out).split())
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if not line.startswith("["))  # stages
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {out} is being written by another run (pid {holder.pid}, "
                          f"`alignlab study reward-hacking --out {out}`, since 20"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.lock"]  # the holder's: nothing made beside it


def test_a_killed_holders_lock_is_taken_over_and_removed_after(holder, tmp_path):
    out = tmp_path / "s"
    with pytest.raises(AlignlabError, match=f"pid {holder.pid}"), output_lock(out):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    stale = json.loads(lock_path(out).read_text())  # the dead holder's file is still there...
    assert stale["pid"] == holder.pid
    with output_lock(out):  # ...and taken over at once, with our name in it
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()


def test_other_outputs_and_readers_are_not_blocked(tmp_path):
    from alignlab.artifacts import atomic_dir

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text("old")
    with atomic_dir(tmp_path / "a", force=True) as tmp, output_lock(tmp_path / "b"), \
            output_lock(tmp_path / "a" / "organism"):  # a study's own outputs inside its dir
        (tmp / "result.json").write_text("new, half")
        assert (tmp_path / "a" / "result.json").read_text() == "old"  # a reader meanwhile sees the finished one
        with pytest.raises(AlignlabError, match="being written by another run"), output_lock(tmp_path / "a"):
            pass
    assert (tmp_path / "a" / "result.json").read_text() == "new, half"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_refusal_removes_the_parent_dirs_it_made(holder, tmp_path):
    holder_out = tmp_path / "s"
    with pytest.raises(AlignlabError), output_lock(holder_out):
        pass
    with output_lock(tmp_path / "new" / "deeper" / "out"):
        assert (tmp_path / "new" / "deeper").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.lock"]  # made for the lock, removed with it


@pytest.mark.slow
def test_two_builds_into_one_output_one_finishes_as_alone_the_other_is_refused(smoke_organism, tmp_path, capsys):
    out = tmp_path / "rh"
    argv = ["organism", "build", "reward-hacker", "--smoke", "--seed", "3", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "alignlab.cli", *argv], env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (lock_path(out).exists() and lock_path(out).read_text()):
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.05)
    assert main(argv) == 2  # the second, while the first trains
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {out} is being written by another run (pid {first.pid}, `alignlab organism "
                              f"build reward-hacker --smoke --seed 3 --out {out}`"), err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rh"]
    assert (out / "eval.json").read_text() == (smoke_organism / "eval.json").read_text()
    assert (out / "model.safetensors").read_bytes() == (smoke_organism / "model.safetensors").read_bytes()
