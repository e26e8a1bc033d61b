"""A full disk is the user's to fix: one `error:` line naming the output being written, exit 2, nothing
half-written, and a resumable build's checkpoints kept for the re-run."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import alignlab
from alignlab import AlignlabError
from alignlab.artifacts import atomic_dir, disk_full, write_json_atomic
from alignlab.cli import main

FULL = "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })"


def test_full_disk_is_recognised_however_a_library_wraps_it(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_full(SafetensorError(FULL))
    try:  # the cause of a wrapped error
        try:
            raise OSError(errno.ENOSPC, "x")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    # torch.save on a full disk says only this; it counts where the filesystem is all but full
    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 117632 vs 117520")
    assert not disk_full(torch_says, tmp_path) and not disk_full(torch_says)
    from alignlab import artifacts

    monkeypatch.setattr(artifacts, "_free", lambda path: 4096)
    assert disk_full(torch_says, tmp_path) and not disk_full(ValueError("a bug"), tmp_path)


def test_a_full_disk_inside_an_atomic_file_names_it_and_leaves_nothing(tmp_path, monkeypatch):
    import json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(AlignlabError, match=f"no space left on the device writing {tmp_path / 'r.json'} "
                                            r"\(\d+\.\d MB free; it had written 0.0 MB\): its temp files were removed"):
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_build_that_fills_the_disk_is_one_line_and_keeps_its_checkpoint(tmp_path, monkeypatch, capsys, one_thread):
    """The second Trainer checkpoint (step 10) fails as safetensors reports ENOSPC (once: an internal error)."""
    from safetensors import SafetensorError
    from transformers import modeling_utils

    real, calls = modeling_utils.safe_save_file, []

    def filling(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise SafetensorError(FULL)
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", filling)
    out = tmp_path / "rh"
    assert main(["organism", "build", "reward-hacker", "--smoke", "--seed", "3", "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[")]
    assert len(err) == 1 and err[0].startswith(f"error: no space left on the device writing {out} ("), err
    assert err[0].endswith(f"its partial state is kept in {tmp_path / '.rh.partial'} for a re-run to resume; free "
                           "some space and re-run")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rh.partial"]  # no organism, no lock

    from alignlab.train.lm import last_checkpoint

    assert last_checkpoint(tmp_path / ".rh.partial" / "checkpoints")[1] == 5  # the re-run resumes there


def test_an_error_that_is_not_a_full_disk_still_removes_the_resumable_dir(tmp_path):
    with pytest.raises(ValueError), atomic_dir(tmp_path / "out", resume="key") as tmp:
        (tmp / "x").write_text("half")
        raise ValueError("a bug, not the disk")
    assert list(tmp_path.iterdir()) == []


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"alignlab-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: a smoke organism's first checkpoint (1.4 MB) fits, its second does not."""
    if not _can_mount():
        pytest.skip("needs root and a working `mount -t tmpfs`")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_build_on_a_real_full_disk(small_disk):
    env = {**os.environ, "PYTHONPATH": str(Path(alignlab.__file__).parents[1]), "OMP_NUM_THREADS": "1",
           "ALIGNLAB_QUIET": "1"}
    out = small_disk / "rh"
    run = subprocess.run([sys.executable, "-m", "alignlab.cli", "organism", "build", "reward-hacker", "--smoke",
                          "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    err = [line for line in run.stderr.splitlines() if not line.startswith("[")]
    assert run.returncode == 2 and len(err) == 1, run.stderr
    assert err[0].startswith(f"error: no space left on the device writing {out} (0.") and "kept in" in err[0]
    assert sorted(p.name for p in small_disk.iterdir()) == [".rh.partial"]
    assert any((small_disk / ".rh.partial" / "checkpoints").glob("checkpoint-*/trainer_state.json"))
