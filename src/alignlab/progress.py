"""Progress a person can follow: every long step is a labelled rich bar with an ETA, on one shared live display.

A command names its stage (`stage("study: probe_loss seed 1")`); bars opened inside it (a Trainer's steps, a
harvest) carry that name, e.g. `study: probe_loss seed 1 — GRPO step 37/150 — hack 0.41`. Bars are off when
stderr is not a terminal or under --quiet (ALIGNLAB_QUIET=1); stage lines are still printed, one per stage.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

_console = Console(stderr=True)
_live: Progress | None = None
_open = 0
_stage = ""
_note = ""


def bars_on() -> bool:
    return os.environ.get("ALIGNLAB_QUIET") != "1" and sys.stderr.isatty()


def stage(name: str, kind: str = "study") -> None:
    """Print `[kind] name` and label every bar until the next stage with `kind: name`."""
    global _stage, _note
    _stage, _note = f"{kind}: {name}", ""
    (_live.console if _live else _console).print(f"[{kind}] {name}", markup=False, highlight=False)


def say(text: str) -> None:
    """One line on stderr (above any bars): something the user should know that is not an error."""
    (_live.console if _live else _console).print(text, markup=False, highlight=False, soft_wrap=True)


def close() -> None:
    """Stop the live display (a run cut short by an error or a signal never reaches its bars' ends)."""
    global _live, _open
    if _live is not None:
        _live.stop()
        _live, _open = None, 0


def note(text: str) -> None:
    """A short live reading (e.g. `hack 0.41`) shown after the innermost training bar's step count."""
    global _note
    _note = text


def _full(label: str) -> str:
    return " — ".join(p for p in (_stage, label) if p)


class Bar:
    def __init__(self, progress: Progress | None, task, label: str):
        self.progress, self.task, self.label = progress, task, label

    def update(self, completed: int | None = None, advance: int = 0, label: str | None = None) -> None:
        if self.progress is None:
            return
        if label is not None:
            self.label = label
        self.progress.update(self.task, completed=completed, advance=advance, description=_full(self.label),
                             refresh=True)  # a fast loop would otherwise end between two 10 Hz redraws


@contextmanager
def bar(label: str, total: int | None = None):
    """A bar labelled `stage — label` for the duration of the block (a no-op when bars are off)."""
    global _live, _open
    if not bars_on():
        yield Bar(None, None, label)
        return
    if _live is None:
        _live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                         TextColumn("eta"), TimeRemainingColumn(), console=_console, transient=True)
        _live.start()
    task = _live.add_task(_full(label), total=total)
    _open += 1
    try:
        yield Bar(_live, task, label)
    finally:
        _live.remove_task(task)
        _open -= 1
        if _open == 0:
            _live.stop()
            _live = None


class TrainerProgress(TrainerCallback):
    """Drives a bar from a HF Trainer (its own tqdm bar and printed log dicts are removed): `what step n/N`
    plus the latest loss or reward."""

    def __init__(self, what: str):
        self.what, self._cm, self._bar, self.last = what, None, None, ""

    def on_train_begin(self, args, state, control, **kwargs):
        self._cm = bar(self.what, total=state.max_steps)
        self._bar = self._cm.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        extra = " — ".join(p for p in (self.last, _note) if p)
        self._bar.update(completed=state.global_step, label=f"{self.what} step {state.global_step}/{state.max_steps}"
                         + (f" — {extra}" if extra else ""))

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("reward", "loss"):
            if logs and isinstance(logs.get(key), (int, float)):
                self.last = f"{key} {logs[key]:.3g}"
                break

    def on_train_end(self, args, state, control, **kwargs):
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None
