"""Harvest per-example residual features from (prompt, completion) pairs, in memory or as safetensors shards.

Each pair is tokenized as prompt ids (with the tokenizer's special tokens, as when sampling) followed by
completion ids (without), so the prompt/completion boundary is exact. Batches are left-padded and given
position ids that skip the padding, so an example's features do not depend on its batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alignlab import AlignlabError
from alignlab.artifacts import atomic_dir, read_json, versions, write_json_atomic
from alignlab.choices import Aggregation, Position
from alignlab.models.batch import batch_inputs, pad_id
from alignlab.models.tap import (
    ActivationTap,
    aggregate,
    completion_mask,
    find_decoder_layers,
    last_prompt_mask,
)
from alignlab.progress import bar

FORMAT = "alignlab-harvest"
FORMAT_VERSION = 1
INDEX = "index.json"


def _encode(tokenizer, pairs: Sequence[tuple[str, str]], position: Position) -> tuple[list[list[int]], list]:
    """Token ids per example and its prompt length. For "prompt_last" only the prompt is fed: the model is
    causal, so the completion cannot change the last prompt token's activations."""
    ids, prompt_lengths = [], []
    for prompt, completion in pairs:
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] if position == "completion" else []
        if not p:
            raise AlignlabError(f"prompt {prompt[:40]!r} encodes to zero tokens")
        if position == "completion" and not c:
            raise AlignlabError(f"completion {completion[:40]!r} encodes to zero tokens (nothing to pool)")
        ids.append(p + c)
        prompt_lengths.append(len(p))
    return ids, prompt_lengths


class Features(dict):
    """harvest's result: {layer: [N, D] float32} that also knows how it was read (`info`: position, aggregation,
    the model's depth and name), so `fit_probe` can give a probe its layer and pooling."""

    def __init__(self, by_layer: dict, info: dict):
        super().__init__(by_layer)
        self.info = dict(info)


def _model_name(model) -> str:
    return getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__


def _batches(pairs: Iterable[tuple[str, str]], size: int):
    it = iter(pairs)
    while batch := list(itertools.islice(it, size)):
        yield batch


@torch.no_grad()
def iter_features(
    model,
    tokenizer,
    pairs: Iterable[tuple[str, str]],
    layers: Sequence[int],
    position: Position = "completion",
    aggregation: Aggregation = "mean",
    batch_size: int = 16,
):
    """Yield one {layer: [b, D] float32 CPU tensor} per batch, in input order (layers normalised >= 0)."""
    if position not in ("completion", "prompt_last"):
        raise AlignlabError(f"unknown position {position!r} (expected completion or prompt_last)")
    if aggregation not in ("mean", "max", "last"):
        raise AlignlabError(f"unknown aggregation {aggregation!r} (expected mean, max or last)")
    if batch_size < 1:
        raise AlignlabError("batch_size must be at least 1")
    pad = pad_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with ActivationTap(model, layers, early_exit=True) as tap:
            for batch in _batches(pairs, batch_size):
                ids, prompt_lengths = _encode(tokenizer, batch, position)
                inputs = batch_inputs(model, ids, pad)
                attention_mask = inputs["attention_mask"]
                acts = tap.run(**inputs)
                if position == "completion":
                    mask = completion_mask(attention_mask, prompt_lengths)
                else:
                    mask = last_prompt_mask(attention_mask, prompt_lengths)
                # pool in float32: a bf16 mean over a long completion loses digits
                yield {layer: aggregate(acts[layer].float(), mask, aggregation).cpu() for layer in tap.layers}
    finally:
        model.train(was_training)


def harvest(
    model,
    tokenizer,
    pairs: Iterable[tuple[str, str]],
    layers: Sequence[int],
    position: Position = "completion",
    aggregation: Aggregation = "mean",
    batch_size: int = 16,
    out_dir: str | Path | None = None,
    *,
    shard_size: int = 4096,
    force: bool = False,
    metadata: dict | None = None,
) -> Features | None:
    """Features per layer ([N, D] float32; a `Features` dict that remembers position and pooling), or, with
    `out_dir`, None after writing shards of at most `shard_size` examples plus index.json (`load_harvest`).

    The directory is built beside `out_dir` and renamed into place at the end, so an interrupted harvest
    leaves nothing that looks complete. Layer keys are normalised (-1 -> n_layers - 1).
    """
    total = len(pairs) if hasattr(pairs, "__len__") else None
    if total == 0:
        raise AlignlabError("harvest needs at least one (prompt, completion) pair")
    stream = iter_features(model, tokenizer, pairs, layers, position, aggregation, batch_size)
    with bar(f"harvesting layers {list(layers)}", total=total) as progress:
        if out_dir is None:
            chunks: list[dict[int, torch.Tensor]] = []
            for chunk in stream:
                chunks.append(chunk)
                progress.update(advance=len(next(iter(chunk.values()))))
            if not chunks:
                raise AlignlabError("harvest needs at least one (prompt, completion) pair")
            return Features({layer: torch.cat([c[layer] for c in chunks]) for layer in chunks[0]},
                            {"position": position, "aggregation": aggregation, "model": _model_name(model),
                             "n_layers": len(find_decoder_layers(model))})
        with atomic_dir(out_dir, force=force) as tmp:
            _write_shards(stream, tmp, shard_size, progress, {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "model": _model_name(model),
                "position": position,
                "aggregation": aggregation,
                "metadata": metadata or {},
                "versions": versions(),
            })
    return None


def _write_shards(stream, tmp: Path, shard_size: int, progress, index: dict) -> None:
    if shard_size < 1:
        raise AlignlabError("shard_size must be at least 1")
    shards: list[dict] = []
    buffer: dict[int, list[torch.Tensor]] = {}
    buffered = 0

    def flush() -> None:
        nonlocal buffer, buffered
        name = f"shard-{len(shards):05d}.safetensors"
        save_file({f"layer_{layer}": torch.cat(parts).contiguous() for layer, parts in buffer.items()},
                  tmp / name)
        shards.append({"file": name, "n": buffered})
        buffer, buffered = {}, 0

    layers: list[int] = []
    d_model = None
    for chunk in stream:
        layers = sorted(chunk)
        n, d_model = chunk[layers[0]].shape
        # split a chunk that straddles a shard boundary: every shard but the last has shard_size rows
        start = 0
        while start < n:
            take = min(n - start, shard_size - buffered)
            for layer, feats in chunk.items():
                buffer.setdefault(layer, []).append(feats[start : start + take])
            buffered += take
            start += take
            if buffered == shard_size:
                flush()
        progress.update(advance=n)
    if buffered:
        flush()
    if not shards:
        raise AlignlabError("harvest needs at least one (prompt, completion) pair")
    write_json_atomic(tmp / INDEX, {**index, "layers": layers, "d_model": d_model, "dtype": "float32",
                                    "n": sum(s["n"] for s in shards), "shards": shards})


def load_harvest(path: str | Path) -> tuple[dict[int, torch.Tensor], dict]:
    """Read a harvest directory back: ({layer: [N, D] float32}, index). Checks files, keys and shapes."""
    path = Path(path)
    index = read_json(path / INDEX, what="harvest index")
    if index.get("format") != FORMAT or index.get("version") != FORMAT_VERSION:
        raise AlignlabError(f"{path / INDEX} is not an {FORMAT} v{FORMAT_VERSION} index")
    try:
        layers = [int(x) for x in index["layers"]]
        d_model, expected_n, shards = int(index["d_model"]), int(index["n"]), list(index["shards"])
    except (KeyError, TypeError, ValueError) as err:
        raise AlignlabError(f"harvest index {path / INDEX} is malformed ({err})") from None
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for shard in shards:
        file = path / str(shard.get("file", ""))
        if not file.is_file():
            raise AlignlabError(f"harvest shard {file} does not exist")
        try:
            tensors = load_file(file)
        except (SafetensorError, OSError) as err:
            raise AlignlabError(f"harvest shard {file} is corrupt: {str(err).splitlines()[0]}") from None
        for layer in layers:
            t = tensors.get(f"layer_{layer}")
            if t is None or tuple(t.shape) != (shard.get("n"), d_model):
                got = None if t is None else tuple(t.shape)
                raise AlignlabError(f"harvest shard {file}: layer {layer} has shape {got}, "
                                    f"expected ({shard.get('n')}, {d_model})")
            parts[layer].append(t)
    features = {layer: torch.cat(p) if p else torch.empty(0, d_model) for layer, p in parts.items()}
    if any(len(f) != expected_n for f in features.values()):
        raise AlignlabError(f"harvest {path} holds fewer examples than its index says ({expected_n})")
    return features, index
