"""Summaries across seeds (mean ± 95% CI) and the reward-hacking study's plots and report.md."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from alignlab.artifacts import new_figure, save_figure


def mean_ci(values) -> tuple[float | None, float | None]:
    """Mean and the half-width of a 95% t-interval (None where undefined)."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None
    if len(xs) == 1:
        return xs[0], None
    half = stats.t.ppf(0.975, len(xs) - 1) * np.std(xs, ddof=1) / math.sqrt(len(xs))
    return float(np.mean(xs)), float(half)


def summarize_arms(records: list[dict], metrics: list[str]) -> dict[str, dict[str, tuple]]:
    arms = list(dict.fromkeys(r["arm"] for r in records))
    return {arm: {m: mean_ci([r["metrics"].get(m) for r in records if r["arm"] == arm]) for m in metrics}
            for arm in arms}


def fmt(pair: tuple) -> str:
    mean, half = pair
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" if half is None else f"{mean:.3f} ± {half:.3f}"


def plot_curves(curves: list[dict], metric: str, path: Path, ylabel: str) -> None:
    fig = new_figure((6.5, 3.8))
    ax = fig.add_subplot()
    for arm in dict.fromkeys(c["arm"] for c in curves):
        points = [c for c in curves if c["arm"] == arm and c.get(metric) is not None]
        steps = sorted({c["step"] for c in points})
        if not steps:
            continue
        ys = [np.mean([c[metric] for c in points if c["step"] == s]) for s in steps]
        ax.plot(steps, ys, "o-", label=arm)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_frontier(summary: dict, baseline_hack: float | None, path: Path) -> None:
    """x: hack rate removed relative to `none`; y: the original probe's AUROC kept on the trained policy."""
    fig = new_figure((5.5, 4))
    ax = fig.add_subplot()
    for arm, m in summary.items():
        hack, hack_ci = m["hack_rate"]
        auc, auc_ci = m["probe_auroc_forced"]
        if hack is None or baseline_hack is None:
            continue
        y = auc if auc is not None else float("nan")
        ax.errorbar(baseline_hack - hack, y, xerr=hack_ci or 0, yerr=auc_ci or 0, fmt="o", capsize=3, label=arm)
        ax.annotate(arm, (baseline_hack - hack, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("hack rate removed vs `none` (higher is better)")
    ax.set_ylabel("original probe AUROC kept (forced completions)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
