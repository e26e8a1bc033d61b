"""Load any HF causal LM (hub id, local directory, a named real model or a `.gguf` file) and save checkpoints as
safetensors + config."""

from __future__ import annotations

from pathlib import Path

from alignlab import AlignlabError


def load_model(name_or_path: str | Path, device: str | None = None):
    """Return (model, tokenizer). A local directory must hold config + safetensors weights + tokenizer. A real
    model name (`alignlab.models.real.REAL_MODELS`, e.g. "smollm2-135m-instruct") or a `.gguf` file is converted
    once into the model cache (an fp32 safetensors directory) and read from there."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.models.real import resolve

    name_or_path = resolve(name_or_path) or name_or_path
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise AlignlabError(f"model path {path} is not a directory")
        for needed in ("config.json", "model.safetensors"):
            if not (path / needed).exists() and not list(path.glob("model-*.safetensors")):
                raise AlignlabError(f"model directory {path} has no {needed}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:  # incl. size mismatch
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "mismatched_sizes" in first:  # transformers' wording points at a report it never shows
            first = "its config.json does not match the shapes of its weights"
        raise AlignlabError(f"cannot load model {name_or_path}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if device:
        model.to(device)
    return model, tokenizer


def save_model(model, tokenizer, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
