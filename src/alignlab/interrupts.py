"""Ctrl-C and SIGTERM: `cli.main` turns either into one `error:` line and exit code 128 + the signal, with the
partial state of the run kept for a re-run to resume.

The handlers raise `Interrupted`, a BaseException (not a KeyboardInterrupt, which typer would swallow into a
silent exit code), so cleanup written as `except Exception` treats it as an interrupt and keeps resumable work.
SIGTERM, a scheduler's preemption, arriving while `hold_term()` is open (around a checkpointing Trainer: see
`train.lm`) is held until the step ends and a checkpoint is saved, and only then raised: the re-run resumes at
that step, not at the last periodic checkpoint. A second SIGTERM while waiting raises at once.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

_pending: int | None = None  # a SIGTERM held until the Trainer has saved a checkpoint
_trainers = 0  # checkpointing Trainers running (nested training is possible, e.g. a study building an organism)


class Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _handler(signum, frame):
    global _pending
    # under DDP the ranks could see the signal at different steps and wait for each other inside the save
    alone = int(os.environ.get("WORLD_SIZE", "1")) == 1
    if signum == signal.SIGTERM and _trainers and _pending is None and alone:
        _pending = signum
        return
    raise Interrupted(signum)


@contextmanager
def handle_signals():
    """SIGINT and SIGTERM raise `Interrupted` inside the block; the previous handlers come back after it."""
    global _pending
    if threading.current_thread() is not threading.main_thread():  # signal.signal works only there
        yield
        return
    old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _pending = None


def term_pending() -> bool:
    return _pending is not None


def raise_pending() -> None:
    """Raise the held SIGTERM, if any (once its checkpoint is saved)."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)


@contextmanager
def hold_term():
    """Inside: a SIGTERM is held for the caller to save its state and call `raise_pending`; on leaving the
    block normally a still-held one is raised."""
    global _trainers
    _trainers += 1
    try:
        yield
    finally:
        _trainers -= 1
    raise_pending()
