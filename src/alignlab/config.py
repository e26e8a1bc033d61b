"""Typed dataclass configs overridden from JSON: unknown fields and wrong types are one-line errors."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from alignlab import AlignlabError


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


def load_overrides(path: str | Path) -> dict:
    from alignlab.artifacts import read_json

    return read_json(path, "config file")
