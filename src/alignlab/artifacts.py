"""Atomic writes and run provenance shared by every command that writes results."""

from __future__ import annotations

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


def write_json_atomic(path: str | Path, data) -> None:
    """Write JSON to a temp file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise AlignlabError(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AlignlabError(f"{what} {path} is not valid JSON: {err.msg if hasattr(err, 'msg') else err}") from None
    if not isinstance(data, dict):
        raise AlignlabError(f"{what} {path} must hold a JSON object")
    return data


def check_new_dir(out: str | Path, force: bool = False) -> None:
    """Refuse to overwrite an output directory unless forced (call early, before any expensive work)."""
    if Path(out).exists() and not force:
        raise AlignlabError(f"output directory {out} already exists (pass --force to replace it)")


@contextmanager
def atomic_dir(out: str | Path, force: bool = False):
    """Yield a fresh temp directory next to `out`; on success it replaces `out`, on failure it is removed."""
    out = Path(out)
    check_new_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def new_figure(size: tuple[float, float] = (6, 3.5)):
    """A matplotlib Figure on its own Agg canvas: no pyplot, so the caller's backend is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> None:
    """Save a figure as PNG atomically (temp file + rename)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
