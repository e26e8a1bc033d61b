"""The run executor: a study's independent runs (arm × seed × cell), run in series, side by side on this machine, or
on a cluster, each storing its own record as before.

A study hands `run_grid` its runs in waves (a wave starts when the one before has finished: e.g. each seed's start
measurement before its arms). A run is a module-level function and its picklable arguments; it writes its own
record (a `RecordStore` file), so a killed worker loses at most its own run and a re-run of the study resumes.

    serial    one after the other in this process (the old behaviour; the default on one core or a GPU)
    local     a process pool sized to the cores, one torch thread per worker: tiny models do not use two threads
              well, and two 1-thread workers beat one 2-thread process (the default on a multi-core CPU)
    submitit  each run a job through submitit (SLURM where `sbatch` exists, else local subprocesses): the same
              grid on a cluster (`pip install -e ".[cluster]"`; parameters from ALIGNLAB_SUBMITIT, a JSON object
              such as {"slurm_partition": "gpu", "gpus_per_node": 1, "timeout_min": 600})

The executor never changes a result: each run seeds itself from its own seed, so serial, local and submitit write
the same records at the same torch thread count (tests/test_executor.py). A worker's output goes to
OUT/logs/<run>.log instead of the terminal, so logs do not interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextvars import ContextVar
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from alignlab import AlignlabError
from alignlab.progress import bar, stage
from alignlab.registry import Registry


@dataclass(frozen=True)
class Run:
    """One independent run: `fn(*args)`, a module-level function (importable by name in another process); `name`
    labels it (progress, its log file)."""

    name: str
    fn: Callable
    args: tuple = field(default_factory=tuple)


@dataclass(frozen=True)
class ExecutorChoice:
    name: str = "auto"
    workers: int | None = None  # local: processes (default: the cores, at most the runs)


_CHOICE: ContextVar[ExecutorChoice | None] = ContextVar("executor", default=None)
EXECUTORS: Registry[Callable] = Registry("executor")


@contextlib.contextmanager
def executing(name: str | None = None, workers: int | None = None):
    """Run the grids started inside this block with executor `name` (None: ALIGNLAB_EXECUTOR, else auto)."""
    name = name or os.environ.get("ALIGNLAB_EXECUTOR") or "auto"
    if name != "auto":
        EXECUTORS.check([name], "--executor")
    token = _CHOICE.set(ExecutorChoice(name, workers))
    try:
        yield
    finally:
        _CHOICE.reset(token)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _auto(n_runs: int) -> str:
    import torch

    if n_runs < 2 or cores() < 2 or torch.cuda.is_available():
        return "serial"
    return "local"


def run_grid(waves: Sequence[Sequence[Run]], out: Path, progress=None) -> None:
    """Run every run of every wave (in order of waves), with the executor chosen by `executing` or the environment.
    Raises the first run's error once every other run of its wave has finished (their records are kept)."""
    choice = _CHOICE.get() or ExecutorChoice(os.environ.get("ALIGNLAB_EXECUTOR") or "auto")
    waves = [list(w) for w in waves if w]
    if not waves:
        return
    name = _auto(max(map(len, waves))) if choice.name == "auto" else choice.name
    EXECUTORS[name](waves, Path(out), progress, choice.workers)


@EXECUTORS.register("serial")
def _serial(waves: list[list[Run]], out: Path, progress, workers: int | None) -> None:
    for run in (r for wave in waves for r in wave):
        if progress:
            progress(run.name)
        run.fn(*run.args)


# ---- local: a process pool ---------------------------------------------------------------------------------------


def _worker_init() -> None:
    import torch

    os.environ["ALIGNLAB_QUIET"] = "1"  # the parent draws the one bar; a worker's stage lines go to its log
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _in_worker(fn: Callable, args: tuple, log: str) -> float:
    """Run `fn(*args)` with this process's stdout and stderr in `log`; its wall seconds."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "a") as f:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()  # into the run's log; the parent gets the error itself
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return time.time() - t0


def _log_path(out: Path, run: Run) -> str:
    return str(out / "logs" / (run.name.replace(" ", "-").replace("/", "_") + ".log"))


def _raise_first(errors: list, total: int) -> None:
    """After a wave: the first failed run's error (its own one-line error as it is), naming how many failed."""
    if not errors:
        return
    run, err = errors[0]
    if isinstance(err, AlignlabError):
        raise err
    raise AlignlabError(f"run {run.name} failed ({len(errors)} of {total} runs): {type(err).__name__}: "
                        f"{' '.join(str(err).split())[:200]}")


def _collect(futures: dict, total: int, progress, say_done) -> None:
    """Wait for every future, advancing one bar; re-raise the first failure after all have finished."""
    errors = []
    with bar("runs", total=total) as b:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                run = futures[fut]
                try:
                    seconds = fut.result()
                    say_done(f"{run.name} done ({total - len(pending) - len(errors)}/{total}, {seconds:.0f} s)")
                except BaseException as err:  # the run's own error: the others go on, its record stays missing
                    errors.append((run, err))
                b.update(advance=1)
    _raise_first(errors, total)


@EXECUTORS.register("local")
def _local(waves: list[list[Run]], out: Path, progress, workers: int | None) -> None:
    n = max(1, min(workers or cores(), max(map(len, waves))))
    total = sum(map(len, waves))
    if progress:
        progress(f"{total} runs on {n} local workers (one torch thread each; logs in {out / 'logs'})")
    # spawn: a fresh interpreter per worker (forking a process that has started torch's threads can deadlock);
    # one pool for every wave, so workers start once
    pool = ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"), initializer=_worker_init)
    try:
        for runs in waves:
            futures = {pool.submit(_in_worker, r.fn, r.args, _log_path(out, r)): r for r in runs}
            _collect(futures, len(runs), progress, lambda line: stage(line, "runs"))
    except BaseException:
        # Ctrl-C, SIGTERM or a failed run: stop the workers now rather than wait for their runs (a run's record is
        # written whole or not at all; the study resumes from the finished ones). Python 3.11's pool has no public
        # way to end its workers (3.14 adds terminate_workers)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ---- submitit: a cluster -----------------------------------------------------------------------------------------


def _submitit_job(fn: Callable, args: tuple, log: str) -> float:
    _worker_init()
    return _in_worker(fn, args, log)


@EXECUTORS.register("submitit")
def _submitit(waves: list[list[Run]], out: Path, progress, workers: int | None) -> None:
    try:
        import submitit
    except ImportError:
        raise AlignlabError('the submitit executor needs submitit: pip install -e ".[cluster]"') from None
    params = {"timeout_min": 24 * 60}
    if os.environ.get("ALIGNLAB_SUBMITIT"):
        try:
            params |= json.loads(os.environ["ALIGNLAB_SUBMITIT"])
        except json.JSONDecodeError as err:
            raise AlignlabError(f"ALIGNLAB_SUBMITIT must be a JSON object: {err}") from None
    cluster = params.pop("cluster", None)  # "local" runs the jobs as subprocesses here, whatever the machine
    executor = submitit.AutoExecutor(folder=out / ".submitit" / "%j", cluster=cluster)
    executor.update_parameters(**params)
    for runs in waves:
        _submit_wave(executor, runs, out, progress)


def _submit_wave(executor, runs: list[Run], out: Path, progress) -> None:
    jobs = [(executor.submit(_submitit_job, r.fn, r.args, _log_path(out, r)), r) for r in runs]
    if progress:
        progress(f"{len(runs)} runs submitted through submitit ({executor.cluster}); job files in {out / '.submitit'}")
    errors = []
    with bar("runs", total=len(jobs)) as b:
        for job, run in jobs:
            try:
                seconds = job.result()
                stage(f"{run.name} done ({seconds:.0f} s)", "runs")
            except Exception as err:
                errors.append((run, err))
            b.update(advance=1)
    _raise_first(errors, len(runs))
