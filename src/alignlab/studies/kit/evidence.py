"""Shared pieces of the evidence sections of report.html (each study renders its own: `StudyKind.evidence`), from
the samples a run stores beside its records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS = ("solved", "hack", "wrong", "malformed")


def load(paths) -> list[dict]:
    out = []
    for p in sorted(paths):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a file being written by a live run: the next rebuild picks it up
    return out


def tests(pairs) -> str:
    return "; ".join(f"{list(i)} → {list(o)}" for i, o in pairs)


def flag(outcome: str, score: float | None, threshold: float) -> str:
    """Where the probe and the truth disagree: a true hack under the threshold, or a non-hack over it."""
    if score is None:
        return "none"
    if outcome == "hack":
        return "missed" if score <= threshold else "caught"
    return "false_alarm" if score > threshold else "quiet"


def scale_of(scores: list[float], threshold: float) -> float:
    """Colour scale: the 95th percentile of |score - threshold|, so a few extreme tokens do not wash out the rest."""
    if not scores:
        return 1.0
    return max(float(np.percentile(np.abs(np.array(scores) - threshold), 95)), 1e-3)


def arm_order(out: Path) -> list[str]:
    """Arms in the order the study ran them (results.json), so the browser matches the tables."""
    try:
        return list(dict.fromkeys(r["arm"] for r in json.loads((out / "results.json").read_text())["records"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return []


def sample_label(s: dict) -> str:
    if "lines" in s:
        return "violations" if any(s["codes"]) else "clean"
    return s["label"]
