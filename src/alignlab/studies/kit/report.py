"""What every study's page shares: summaries across seeds, how a cell shows them, bounded axes, labels that do not
pile up, the organism's name, and the reward-hacking-style curve and frontier plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from alignlab import AlignlabError
from alignlab.artifacts import new_figure, read_json, save_figure

FEW_SEEDS = 3  # at or below this many seeds a cell shows the seeds' min–max: a t-interval there is t(2) = 4.3 wide

# (lowest value, where the axis starts unless a value is below it, highest) by what a metric's name contains; the
# first match wins. AUROC's axis starts at chance (0.5) unless something falls below it.
RANGES = (("cosine", (-1.0, 0.0, 1.0)), ("removed", (-1.0, 0.0, 1.0)), ("lost", (-1.0, 0.0, 1.0)),
          ("auroc", (0.0, 0.5, 1.0)), ("separability", (0.5, 0.5, 1.0)),
          ("rate", (0.0, 0.0, 1.0)), ("recall", (0.0, 0.0, 1.0)), ("share", (0.0, 0.0, 1.0)),
          ("precision", (0.0, 0.0, 1.0)), ("solve", (0.0, 0.0, 1.0)), ("defection", (0.0, 0.0, 1.0)),
          ("kl_", (0.0, 0.0, math.inf)))


def metric_range(metric: str) -> tuple[float, float, float] | None:
    name = metric.lower()
    if "per_second" in name:
        return None
    return next((r for key, r in RANGES if key in name), None)


class Stat(tuple):
    """A summary over seeds: unpacks as the (mean, 95% t half-width) pair it has always been (results.json stores
    that pair), and keeps the values it came from and the metric's range for what a page shows (`interval`)."""

    values: tuple = ()
    bounds: tuple | None = None

    def __new__(cls, mean=None, half=None, values=(), bounds=None):
        self = super().__new__(cls, (mean, half))
        self.values, self.bounds = tuple(values), bounds
        return self

    def __getnewargs__(self):
        return (self[0], self[1], self.values, self.bounds)

    def interval(self) -> tuple[float, float, str] | None:
        """(low, high, kind) drawn around the mean: the seeds' "min–max" at FEW_SEEDS or fewer, else the "95% CI"
        clipped to the metric's range (where it leaves it: "clipped"); None for one value."""
        mean, half = self
        if mean is None or half is None:
            return None
        if len(self.values) <= FEW_SEEDS:
            return min(self.values), max(self.values), "min–max"
        lo, hi = mean - half, mean + half
        if self.bounds is not None and (lo < self.bounds[0] or hi > self.bounds[-1]):
            return max(lo, self.bounds[0]), min(hi, self.bounds[-1]), "clipped"
        return lo, hi, "95% CI"


def mean_ci(values, bounds: tuple | None = None) -> Stat:
    """Mean and the half-width of a 95% t-interval (None where undefined); `bounds`: the metric's (low, …, high)."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return Stat(bounds=bounds)
    if len(xs) == 1:
        return Stat(xs[0], None, xs, bounds)
    half = stats.t.ppf(0.975, len(xs) - 1) * np.std(xs, ddof=1) / math.sqrt(len(xs))
    return Stat(float(np.mean(xs)), float(half), xs, bounds)


def summarize_arms(records: list[dict], metrics: list[str]) -> dict[str, dict[str, Stat]]:
    arms = list(dict.fromkeys(r["arm"] for r in records))
    return {arm: {m: mean_ci([r["metrics"].get(m) for r in records if r["arm"] == arm], metric_range(m))
                  for m in metrics} for arm in arms}


def fmt(pair, nd: int = 3) -> str:
    """A table cell: `mean (min–max)` over 2–3 seeds (the mean alone where they agree), `mean ± half` for more,
    `mean [low, high]` where that interval is clipped to the metric's range; a bare (mean, half) pair read back from
    JSON shows as `mean ± half`."""
    mean, half = pair[0], pair[1]
    if mean is None:
        return "n/a"
    shown = pair.interval() if isinstance(pair, Stat) else None
    if half is None:
        return f"{mean:.{nd}f}"
    if shown is None or shown[2] == "95% CI":
        return f"{mean:.{nd}f} ± {half:.{nd}f}"
    lo, hi, kind = (f"{v:.{nd}f}" if isinstance(v, float) else v for v in shown)
    if kind == "min–max":
        if lo == hi:  # the seeds agree to the digits shown
            return f"{mean:.{nd}f}"
        return f"{mean:.{nd}f} ({lo} to {hi})" if lo.startswith("-") else f"{mean:.{nd}f} ({lo}–{hi})"
    return f"{mean:.{nd}f} [{lo}, {hi}]"


def spread_note(n_seeds: int) -> str:
    """The caption that says what a table's cells show, for the number of seeds behind them."""
    if n_seeds <= 1:
        return "One seed: each cell is that seed's value."
    if n_seeds <= FEW_SEEDS:
        return (f"Each cell: the mean over {n_seeds} seeds and, in brackets, the seeds' min–max where they differ (a "
                f"95% t-interval on {n_seeds} seeds is wider than most metrics' whole range).")
    return (f"Each cell: the mean over {n_seeds} seeds ± the half-width of its 95% t-interval; where that interval "
            "would leave the metric's range it is shown clipped to it, as [low, high].")


# ---- plots ---------------------------------------------------------------------------------------------------

def bounded_axis(ax, metric, values=(), axis: str = "y") -> None:
    """Fix the axis of a bounded metric (a name in RANGES, or a (low, start, high) triple) to its honest range:
    [start, high], reaching down towards low (in quarters) where a value falls below start. Autoscaling would blow
    a change of 2e-5 up to the whole height of the plot (save_figure turns offset notation off on every axis)."""
    lo, start, hi = metric_range(metric) if isinstance(metric, str) else metric
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    # below start: down to the next quarter, so a value just under it shows as just under it, on a fixed grid
    low = max(lo, math.floor(min(finite) * 4) / 4) if any(v < start for v in finite) else start
    if not np.isfinite(hi):
        hi = max(finite, default=low + 1)
    pad = 0.03 * (hi - low)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(low - pad, hi + pad)


def label_points(ax, points: dict[str, tuple[float, float]], near: tuple[float, float] = (0.08, 0.04),
                 fontsize: int = 7) -> None:
    """One label per cluster: names of points closer than `near` (fractions of the axes' width and height: a
    label is wider than tall) to the cluster's first are written once, together, so arms that end at (or near)
    the same point do not overprint each other's names. Call after the limits."""
    to_axes = ax.transData + ax.transAxes.inverted()
    clusters: list[tuple[np.ndarray, list, list[str]]] = []  # (first point in axes units, points, names)
    for name, (x, y) in points.items():
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        at = to_axes.transform((x, y))
        hit = next((c for c in clusters if (np.abs(c[0] - at) < near).all()), None)
        if hit is None:
            clusters.append((at, [(x, y)], [name]))
        else:
            hit[1].append((x, y))
            hit[2].append(name)
    placed = []
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    for at, xys, names in clusters:
        xy = tuple(np.mean(xys, axis=0))  # the label points at the cluster's middle
        right, top = at[0] > 0.6, at[1] > 0.7  # first choice: towards the middle
        label = ax.annotate("\n".join(names), xy, xytext=(0, 0), fontsize=fontsize, textcoords="offset points")
        # the first of the four corners around the point where the label stays inside the axes, clear of the others
        for r, t in ((right, top), (right, not top), (not right, top), (not right, not top), (right, top)):
            label.set(position=(-5 if r else 5, -4 if t else 4), ha="right" if r else "left",
                      va="top" if t else "bottom")
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(p) for p in placed) and inside.contains(box.x0, box.y0) \
                    and inside.contains(box.x1, box.y1):
                break
        placed.append(label.get_window_extent(renderer))


def seed_band(ax, steps, stats_at: list[Stat], **style):
    """The mean over seeds as a line (markers only while they can be told apart) and the spread `Stat.interval`
    gives as a band."""
    means = [s[0] for s in stats_at]
    line, = ax.plot(steps, means, marker="o" if len(steps) <= 15 else None, ms=3.5, **style)
    shown = [s.interval() for s in stats_at]
    if any(shown):
        lo = [m if i is None else i[0] for m, i in zip(means, shown, strict=True)]
        hi = [m if i is None else i[1] for m, i in zip(means, shown, strict=True)]
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    return line


def plot_curves(curves: list[dict], metric: str, path: Path, ylabel: str) -> None:
    fig = new_figure((6.5, 3.8))
    ax = fig.add_subplot()
    shown = []
    for arm in dict.fromkeys(c["arm"] for c in curves):
        points = [c for c in curves if c["arm"] == arm and c.get(metric) is not None]
        steps = sorted({c["step"] for c in points})
        if not steps:
            continue
        at = [mean_ci([c[metric] for c in points if c["step"] == s], metric_range(metric)) for s in steps]
        seed_band(ax, steps, at, label=arm)
        shown += [c[metric] for c in points]
    if metric_range(metric):
        bounded_axis(ax, metric, shown)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    n = len({c["seed"] for c in curves})
    if n > 1:
        ax.set_title(f"mean over {n} seeds; band: {'min–max' if n <= FEW_SEEDS else '95% CI'}", fontsize=8)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def error_bars(stat: Stat):
    """matplotlib's [[below], [above]] for what `Stat.interval` shows (0 where there is none)."""
    shown = stat.interval()
    # max(0, …): the mean of equal values can land a rounding error outside their min–max
    return [[0], [0]] if shown is None else [[max(0, stat[0] - shown[0])], [max(0, shown[1] - stat[0])]]


def plot_frontier(summary: dict, baseline_hack: float | None, path: Path) -> None:
    """x: hack rate removed relative to `none`; y: the original probe's AUROC kept on the trained policy."""
    fig = new_figure((5.5, 4))
    ax = fig.add_subplot()
    points = {}
    for arm, m in summary.items():
        hack, auc = m["hack_rate"], m["probe_auroc_forced"]
        if hack[0] is None or baseline_hack is None:
            continue
        x, y = baseline_hack - hack[0], auc[0] if auc[0] is not None else float("nan")
        # the removal's spread is the arm's own over seeds; x mirrors the hack rate, so its bars swap sides
        ax.errorbar(x, y, xerr=error_bars(hack)[::-1], yerr=error_bars(auc), fmt="o", capsize=3)
        points[arm] = (x, y)
    bounded_axis(ax, "removed", [p[0] for p in points.values()], axis="x")
    bounded_axis(ax, "auroc", [p[1] for p in points.values()])
    label_points(ax, points)
    ax.set_xlabel("hack rate removed vs `none` (higher is better)")
    ax.set_ylabel("original probe AUROC kept (forced completions)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


# ---- the organism --------------------------------------------------------------------------------------------

def organism_name(out: Path, recorded: str | Path) -> str:
    """The organism as its card (organism.json) names it: kind, seed, size. Never its directory: with --organism
    that is a path on the user's machine."""
    path = Path(recorded) if Path(recorded).is_absolute() else Path(out) / recorded
    try:
        card = read_json(path / "organism.json", "organism card")
    except AlignlabError:
        return f"`{Path(recorded).name}` (no organism.json card)"
    model = card.get("config", {}).get("model", {})
    size = f"d{model['d_model']}x{model['n_layers']}, " if "d_model" in model and "n_layers" in model else ""
    base = card.get("base_model") or ""
    base = f", from {Path(base).name}" if base and "from scratch" not in base else ""  # a path: its name only
    return (f"{card.get('organism', '?')} (seed {card.get('seed', '?')}, {size}{card.get('n_params', 0):,} "
            f"parameters{base})")
