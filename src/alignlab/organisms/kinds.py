"""The organism registry: one `OrganismKind` per recipe, and loading an organism directory of any kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignlab import AlignlabError
from alignlab.artifacts import read_json
from alignlab.models import load_model
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
    path = Path(path)
    if not path.is_dir():
        raise AlignlabError(f"organism directory {path} does not exist")
    card = read_json(path / "organism.json", "organism card")
    if kind is not None and card.get("organism") != kind:
        raise AlignlabError(f"{path / 'organism.json'} is not a {kind} organism")
    model, tokenizer = load_model(path)
    return model, tokenizer, card


def kind_of(card: dict) -> OrganismKind:
    """The recipe a card was built by (cards without a name are reward hackers, the first recipe)."""
    return ORGANISMS[card.get("organism", "reward-hacker")]
