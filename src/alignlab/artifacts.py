"""Atomic writes and run provenance shared by every command that writes results."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from alignlab import AlignlabError

_PACKAGES = ("alignlab", "torch", "transformers", "trl", "accelerate", "tokenizers", "safetensors", "scikit-learn")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_mode(path: str | Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp make 0600/0700 entries; give them the mode a plain open()/mkdir() would (umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


_FULL = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
_NEARLY_FULL = 1 << 20  # bytes free below which a failed write is taken for a full disk


def _free(path: str | Path) -> int:
    path = Path(path).absolute()
    st = os.statvfs(next(p for p in (path, *path.parents) if p.exists()))
    return st.f_bavail * st.f_frsize


def disk_full(err: BaseException, where: str | Path | None = None) -> bool:
    """ENOSPC/EDQUOT however a library wraps it: an OSError, or its text in a SafetensorError or a RuntimeError
    (anywhere along the exception's causes); or, with `where`, an I/O-ish error while that filesystem is all but
    full (torch.save then says only `unexpected pos 117632 vs 117520`)."""
    first, seen = err, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(t in str(err) for t in _FULL):
            return True
        err = err.__cause__ or err.__context__
    io_error = isinstance(first, (OSError, RuntimeError)) or type(first).__name__ == "SafetensorError"
    return where is not None and io_error and _free(where) < _NEARLY_FULL


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def disk_full_error(out: str | Path, temp: Path | None = None, kept: bool = False) -> AlignlabError:
    """`no space left …` naming the output, the free space there and what the run had written when it stopped."""
    out = Path(out).absolute()
    free = _free(out)
    written = f"; it had written {_size(temp) / 1e6:.1f} MB" if temp is not None and temp.exists() else ""
    after = (f"its partial state is kept in {temp} for a re-run to resume" if kept else
             "its temp files were removed")
    return AlignlabError(f"no space left on the device writing {out} ({free / 1e6:.1f} MB free{written}): {after}; "
                         "free some space and re-run")


@contextmanager
def atomic_file(path: str | Path):
    """Yield a temp file path beside `path` (normal permissions) to write, any way a library writes; it is renamed
    onto `path` on success and removed on failure, so a reader never sees half a file. The one temp-file writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _normal_mode(tmp)
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        full = disk_full_error(path, Path(tmp)) if disk_full(err, path.parent) else None
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise full from None
        raise


def write_json_atomic(path: str | Path, data) -> None:
    """Write JSON to a temp file beside `path`, then rename: a reader never sees half a file."""
    with atomic_file(Path(path)) as tmp, open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(Path(path)) as tmp:
        Path(tmp).write_text(text)


_CACHES = ("study record", "study stage")  # files a study wrote for itself (runs.records)


def require_file(path: str | Path, what: str = "file") -> Path:
    """Refuse a missing input file, and one that is not a regular file: a FIFO or /dev/zero would block or never
    end, so it is refused before it is opened."""
    path = Path(path)
    if not path.exists():
        raise AlignlabError(f"{what} {path} does not exist")
    if not path.is_file():
        raise AlignlabError(f"{what} {path} is not a regular file")
    return path


def read_json(path: str | Path, what: str = "file") -> dict:
    path = require_file(path, what)
    hint = " (a damaged cache: delete it and re-run to recompute it)" if what in _CACHES else ""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AlignlabError(f"{what} {path} is not valid JSON: {err.msg if hasattr(err, 'msg') else err}"
                            f"{hint}") from None
    if not isinstance(data, dict):
        raise AlignlabError(f"{what} {path} must hold a JSON object{hint}")
    return data


def check_output(out: str | Path, kind: str = "dir", force: bool = False, what: str = "--out") -> Path:
    """Refuse, before any work starts, an output the command could not write. `kind`: "dir" (a new directory,
    replaced only with `force`), "file", or "resumable" (a directory a re-run continues in). Missing parent
    directories are fine (they are created), as long as the nearest existing one is a writable directory."""
    out = Path(out)
    if out.exists():
        if kind != "file" and not out.is_dir():
            raise AlignlabError(f"{what} {out} is a file, not a directory")
        if kind == "file" and out.is_dir():
            raise AlignlabError(f"{what} {out} is a directory, not a file")
        if kind == "dir" and not force:
            raise AlignlabError(f"output directory {out} already exists (pass --force to replace it)")
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AlignlabError(f"{what} {out}: {ancestor} is a file, not a directory")
    read_only = bool(os.statvfs(ancestor).f_flag & os.ST_RDONLY)
    if read_only or not os.access(ancestor, os.W_OK | os.X_OK):
        raise AlignlabError(f"{what} {out}: directory {ancestor} is not writable")
    if out.exists() and not os.access(out, os.W_OK):
        raise AlignlabError(f"{what} {out} is not writable")
    return out


def check_new_dir(out: str | Path, force: bool = False) -> None:
    """Refuse to overwrite an output directory unless forced (call early, before any expensive work)."""
    check_output(out, "dir", force)


def fingerprint(data) -> str:
    """A short stable hash of JSON-able data: what a resumable temp dir was started for."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


_RESUME_MARK = ".resume-key"


@contextmanager
def atomic_dir(out: str | Path, force: bool = False, resume: str | None = None):
    """Yield a temp directory next to `out`; on success it replaces `out`, on failure it is removed, and so are
    parent directories it created. The output's lock (`locks.output_lock`) is held throughout: one writer per
    output. Temp dirs of killed runs of the same `out` are removed first, except that with `resume` (a
    fingerprint of the work) the one started for the same work is handed back to continue in (a kill leaves it;
    an interrupt or a full disk keeps it too)."""
    from alignlab.locks import output_lock

    out = Path(out)
    check_output(out, "dir", force)
    with output_lock(out):
        check_output(out, "dir", force)  # again, now that no other run can be finishing it
        keep = out.parent / f".{out.name}.partial"
        reuse = resume is not None and keep.is_dir() and (keep / _RESUME_MARK).is_file() \
            and (keep / _RESUME_MARK).read_text() == resume
        for stale in out.parent.glob(f".{glob.escape(out.name)}.*partial"):
            if not (reuse and stale == keep):
                shutil.rmtree(stale, ignore_errors=True)
        if resume is not None:
            keep.mkdir(exist_ok=True)
            (keep / _RESUME_MARK).write_text(resume)
            tmp = keep
        else:
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
        _normal_mode(tmp, directory=True)
        try:
            yield tmp
            (tmp / _RESUME_MARK).unlink(missing_ok=True)
            for path in tmp.rglob("*"):  # libraries that save through mkstemp leave 0600 files
                if path.is_file() and not path.stat().st_mode & 0o077:
                    _normal_mode(path)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException as err:
            full = disk_full(err, out.parent)
            # an error is final; an interrupt, or a full disk, leaves resumable work to continue
            kept = resume is not None and (full or not isinstance(err, Exception))
            if full:
                message = disk_full_error(out, tmp, kept)
            if not kept:
                shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise message from None
            raise


def new_figure(size: tuple[float, float] = (6, 3.5)):
    """A matplotlib Figure on its own Agg canvas: no pyplot, so the caller's backend is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> None:
    """Save a figure as PNG atomically (temp file + rename), every axis with plain tick labels: matplotlib's offset
    notation (`1e-5+9.999e-1`) draws a change of 2e-5 as if it were the whole range."""
    from matplotlib.ticker import ScalarFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_formatter(), ScalarFormatter):
                axis.get_major_formatter().set_useOffset(False)
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
