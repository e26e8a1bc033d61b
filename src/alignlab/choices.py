"""Named choices shared by the instruments and the command line, declared once (no torch here: the CLI builds its
option enums from these without importing a model)."""

from __future__ import annotations

from typing import Literal, get_args

Position = Literal["completion", "prompt_last"]  # completion tokens, or the last prompt token (intent before acting)
Aggregation = Literal["mean", "max", "last"]  # how a completion's tokens are pooled

POSITIONS: tuple[str, ...] = get_args(Position)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
