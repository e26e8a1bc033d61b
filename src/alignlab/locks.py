"""One writer per output: an exclusive `flock` on a hidden lock file beside the output (`.<name>.lock`).

Beside, not inside: an atomic dir does not exist until it is renamed into place, and is replaced whole by
`--force`. The file holds only who holds the lock (pid, command, since when), for the refusal message; it is
removed on release. The lock itself is the kernel's, so a killed holder releases it as it dies: the next run
takes over the file it left (and its stale holder line). Readers take no lock: outputs appear by rename, so a
finished one is never seen half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from alignlab import AlignlabError

command = "alignlab"  # the command line named to a refused second run (cli.main sets it)


def lock_path(out: str | Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        info = json.loads(os.pread(fd, 4096, 0))
        return f"pid {info['pid']}, `{info['command']}`, since {info['since']}"
    return "a process that has not yet said who it is"


@contextmanager
def output_lock(out: str | Path):
    """Hold the output's lock for the block, or refuse at once in one line naming the holder. Missing parent
    directories are created, and removed again on release if they were left empty (a failed run)."""
    path = lock_path(out)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            _remove_empty(created)
            raise AlignlabError(f"{out} is being written by another run ({holder}): wait for it to end, or "
                                f"choose another output") from None
        try:  # a holder that released and unlinked between our open and flock: lock a fresh file instead
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    with contextlib.suppress(OSError):  # who holds it is for messages only: a full disk must not stop the run
        info = {"pid": os.getpid(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked, so no other run can hold the file we remove
        os.close(fd)
        _remove_empty(created)


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()
