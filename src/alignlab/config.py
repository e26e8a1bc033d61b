"""Typed dataclass configs overridden from JSON: unknown fields, wrong types and out-of-range values are
one-line errors, found by `validate` before any work starts."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path

from alignlab import AlignlabError


def doc(help: str, default=dataclasses.MISSING, *, factory=None):
    """A config field that says what it is, its unit or range, and why its default (TRL-style
    `field(metadata={"help": ...})`): `seed: int = doc("...", 0)`, `train: X = doc("...", factory=X)`. The help
    is what `alignlab config show STUDY --explain` prints, and a test requires it of every field."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(cls, name: str) -> str:
    """The help of field `name` of dataclass `cls` ("" if it has none)."""
    return next((f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name), "")


def explain(config, where: str = "") -> list[tuple[str, object, str]]:
    """(path, default value, help) for every leaf field of a (nested) config dataclass, in declaration order."""
    out = []
    for f in dataclasses.fields(config):
        value, path = getattr(config, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            out += explain(value, path)
        else:
            out.append((path, value, f.metadata.get("help", "")))
    return out


def override(config, changes: dict, where: str = ""):
    """A copy of the (frozen, nested) dataclass `config` with `changes` applied, checked field by field."""
    if not isinstance(changes, dict):
        raise AlignlabError(f"config field '{where or '<root>'}' must be an object")
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    updates = {}
    for name, value in changes.items():
        path = f"{where}.{name}" if where else name
        if name not in fields:
            raise AlignlabError(f"unknown config field '{path}'")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            updates[name] = override(current, value, path)
        else:
            updates[name] = _check_type(value, hints[name], path)
    return dataclasses.replace(config, **updates)


def _check_type(value, hint, path: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # `int | None`: None, or a value of the other type
        if value is None and type(None) in typing.get_args(hint):
            return None
        return _check_type(value, next(a for a in typing.get_args(hint) if a is not type(None)), path)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise AlignlabError(f"config field '{path}'={value!r} must be one of {list(typing.get_args(hint))}")
        return value
    if origin is dict:
        _, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise AlignlabError(f"config field '{path}' must be an object")
        return {str(k): _check_type(v, value_type, f"{path}.{k}") for k, v in value.items()}
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise AlignlabError(f"config field '{path}' must be a list")
        return tuple(_check_type(v, item_type, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, bool, str) and (type(value) is not hint):
        raise AlignlabError(f"config field '{path}' must be {hint.__name__}, got {value!r}")
    return value


def check_rules(config, what: str, rules, error: type[Exception] = AlignlabError):
    """Raise `error` for the first (field, ok, why) rule that fails, naming the field and its value."""
    for name, ok, why in rules:
        if not ok:
            raise error(f"{what} field '{name}'={getattr(config, name)!r} {why}")
    return config


# Ranges by field name, shared by every config dataclass (first match wins): (pattern, low, high, low open?); a list
# field's name (`lambdas`, `tprs`) holds every item to its singular's range.
# Cross-field rules (shapes that divide, min <= max) live in each dataclass's own `check()`.
_COUNT = 10**8
RANGES: tuple[tuple[str, float, float, bool], ...] = (
    (r"seeds?|first_seed", 0, 2**32 - 1, False),  # what numpy's and torch's generators accept
    (r"(probe_)?layer", -1024, 1024, False),  # existence is checked against the model once it is loaded
    (r"learning_rate|lr|sft_lr", 0, 10, True),
    (r"temperature", 0, 100, False),
    (r".*(fraction|ratio|_tpr|_fpr)|tprs|weight_decay|finetune_switch|filter_drop", 0, 1, False),
    (r"epochs", 0, 1000, True),
    (r".*_every|checkpoints|drop|betas?|penalty|penalties|probe_lambda|lambdas|probe_penalty|.*coefficient", 0, 1e6,
     False),
    (r"d_model|d_ff|d_sae|projection_dim", 1, 1 << 20, False),
    (r"n_layers", 1, 256, False),
    (r"n_heads", 1, 1024, False),
    (r"vocab_size", 1, 1 << 20, False),
    (r"max_len|block_len|max_new_tokens|max_completion_length|max_doc_lines", 1, 1 << 20, False),
    (r"batch_size|sft_batch|prompts_per_step|num_generations", 1, 1 << 16, False),
    (r".*steps", 1, 10**7, False),
    (r"tokens", 1, 10**13, False),
    (r"n_.*|.*_(tasks|samples|docs|queries|groups|top)|groups|k|aux_k|expansion_factor|top_k|max_files"
     r"|min_group|tags_per_bad_segment|samples_per_task", 1, _COUNT, False),
)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _range_error(value, name: str) -> str | None:
    """Why `value` is out of range for a field called `name`, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    for pattern, low, high, open_low in RANGES:
        if re.fullmatch(pattern, name):
            if (value <= low if open_low else value < low) or value > high:
                return f"must be in {'(' if open_low else '['}{_num(low)}, {_num(high)}]"
            return None
    if abs(value) > 10**12:
        return "must be at most 1e12 in size"
    return None


def validate(config, section: str = "config", where: str = ""):
    """Check every field of the (nested) dataclass `config`: its type, its range by name (`RANGES`), then the
    class's own `check()` for rules between fields. Raises a one-line AlignlabError; returns `config`."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, path = getattr(config, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            validate(value, section, path)
            continue
        _check_type(value, hints[f.name], path)
        for item in value if isinstance(value, tuple) else (value,):
            if (why := _range_error(item, f.name)) is not None:
                raise AlignlabError(f"{section} field '{path}'={value!r} {why}")
    check = getattr(config, "check", None)
    if check is not None:
        check()
    return config


def check_layer(section: str, name: str, layer: int, n_layers: int) -> None:
    """A layer index (negative counts from the end) the model really has, else a one-line error."""
    if not -n_layers <= layer < n_layers:
        raise AlignlabError(f"{section} field '{name}'={layer} must be a layer of the {n_layers}-layer model "
                            f"({-n_layers}..{n_layers - 1})")


def load_overrides(path: str | Path) -> dict:
    from alignlab.artifacts import read_json

    return read_json(path, "config file")
