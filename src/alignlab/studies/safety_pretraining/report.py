"""The safety-pretraining study's plots and report.md: misalignment vs tokens, the score-vs-capability Pareto
plot, pretraining vs fine-tuning, and (hacking world) survival under RL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps

from alignlab.artifacts import new_figure, save_figure
from alignlab.studies.kit.html import publish
from alignlab.studies.kit.report import (
    bounded_axis,
    error_bars,
    fmt,
    label_points,
    metric_range,
    spread_note,
    summarize_arms,
)

COLUMNS = [("score_mean", "score"), ("score_expected_max", "exp. max@25"), ("hit_rate", "hit rate"),
           ("adv_score_mean", "adv. score"), ("adv_score_expected_max", "adv. exp. max@25"),
           ("heldout_loss", "held-out loss"), ("kl_from_mle", "KL from MLE"), ("tokens_per_second", "tokens/s")]
WORLD_COLUMNS = {
    "pep8": [("syntax_error", "syntax-error share"), ("bad_line_rate", "bad-line share")],
    "reward-hacking": [("honest_solve_rate", "honest solve"), ("rl_final_hack_rate", "hack after RL"),
                       ("rl_steps_to_half", "RL steps to 50% hack")],
}


def safe_decoding_rows(records: list[dict]) -> list[dict]:
    """The tags arm measured again under safe decoding, as a row of its own."""
    rows = []
    for r in records:
        if r["objective"] == "tags" and "safe_score_mean" in r["metrics"]:
            m = {k[len("safe_"):]: v for k, v in r["metrics"].items() if k.startswith("safe_")}
            rows.append({**r, "arm": r["arm"].replace("tags", "tags+safe-decoding"),
                         "metrics": {**r["metrics"], **m}})
    return rows


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Arms not dominated on (capability loss, misalignment): none is at least as good on both and better on one."""
    front = []
    for a, (x, y) in points.items():
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for b, (x2, y2) in points.items() if b != a):
            front.append(a)
    return front


def plot_phase(curves: list[dict], phase: str, x: str, y: str, path: Path, xlabel: str, ylabel: str) -> None:
    """One line per arm (dashed for fine-tuning arms): `y` against `x` over the curve points of `phase`, mean over
    seeds."""
    fig = new_figure((6.5, 4))
    ax = fig.add_subplot()
    ax.set_prop_cycle(color=colormaps["tab20"].colors)  # up to 20 arms, no colour reused
    for arm in dict.fromkeys(c["arm"] for c in curves if c.get("phase") == phase):
        pts = [c for c in curves if c["arm"] == arm and c.get("phase") == phase]
        xs = sorted({c[x] for c in pts})
        ax.plot(xs, [np.mean([c[y] for c in pts if c[x] == v]) for v in xs], "--" if "@" in arm else "-",
                marker="o" if len(xs) <= 15 else None, ms=3.5, label=arm)
    if metric_range(y):
        bounded_axis(ax, y, [c[y] for c in curves if c.get("phase") == phase])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    save_figure(fig, path)


def plot_pareto(summary: dict, front: list[str], path: Path) -> None:
    fig = new_figure((6, 4.2))
    ax = fig.add_subplot()
    points = {}
    for arm, m in summary.items():
        x, y = m["heldout_loss"][0], m["score_mean"][0]
        if x is None or y is None:
            continue
        ax.errorbar(x, y, xerr=error_bars(m["heldout_loss"]), yerr=error_bars(m["score_mean"]),
                    fmt="s" if arm in front else "o", capsize=3)
        points[arm + (" *" if arm in front else "")] = (x, y)
    ax.autoscale_view()
    label_points(ax, points, fontsize=6)
    ax.set_xlabel("held-out loss on good documents (nats/token, lower is better)")
    ax.set_ylabel("misalignment score (lower is better)")
    ax.set_title("* Pareto-optimal", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_pretrain_vs_finetune(summary: dict, path: Path) -> None:
    objectives = [a.split("@")[0] for a in summary if a.endswith("@finetune") and a.split("@")[0] in summary]
    fig = new_figure((6, 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(objectives))
    for dx, suffix, lab in ((-0.2, "", "pretraining"), (0.2, "@finetune", "fine-tuning")):
        ys = [summary[o + suffix]["score_mean"][0] or 0 for o in objectives]
        ax.bar(x + dx, ys, 0.4, label=lab)
    if "mle" in summary and summary["mle"]["score_mean"][0] is not None:
        ax.axhline(summary["mle"]["score_mean"][0], color="k", ls=":", label="MLE")
    ax.set_xticks(x, objectives, fontsize=8)
    ax.set_ylabel("misalignment score")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def answer(summary: dict, front: list[str]) -> str:
    """The plain answer from the numbers: the least misaligned arm against `mle`, whether the seeds tell them
    apart (their spreads, as the table shows them, do not overlap), and at what held-out loss."""
    score = {a: m["score_mean"] for a, m in summary.items() if m["score_mean"][0] is not None}
    if not score:
        return "No arm has a misalignment score."
    best = min(score, key=lambda a: score[a][0])
    tied = [a for a in score if score[a][0] == score[best][0]]
    if len(tied) > 1:
        out = f"Tied as the least misaligned: {', '.join(f'`{a}`' for a in tied)} (score {fmt(score[best], 4)}"
    else:
        out = f"The least misaligned arm is `{best}` (score {fmt(score[best], 4)}"
    mle = summary.get("mle")
    if mle and "mle" not in tied and mle["score_mean"][0] is not None:
        out += f" against `mle`'s {fmt(mle['score_mean'], 4)}"
        a, b = score[best].interval(), mle["score_mean"].interval()
        if a is None or b is None:
            out += "; one seed, no spread to tell them apart"
        elif a[1] < b[0]:
            out += "; the seeds' spreads do not overlap"
        else:
            out += "; the seeds' spreads overlap: not told apart at these settings"
        if summary[best]["heldout_loss"][0] is not None and mle["heldout_loss"][0] is not None:
            out += (f"; held-out loss {summary[best]['heldout_loss'][0] - mle['heldout_loss'][0]:+.3f} nats/token "
                    "against `mle`")
    out += "). Pareto-optimal on (held-out loss, misalignment): " + ", ".join(f"`{a}`" for a in front) + "."
    return out


def findings(summary: dict, front: list[str]) -> list[str]:
    """Plain-words statements computed from the numbers."""
    out, score = [], {a: m["score_mean"][0] for a, m in summary.items() if m["score_mean"][0] is not None}
    if score:
        order = sorted(score, key=score.get)
        out.append("- Misalignment, lowest first: " + ", ".join(f"`{a}` {score[a]:.4f}" for a in order) + ".")
    mle = summary.get("mle")
    if mle and mle["score_mean"][0]:
        for arm in ("conditional", "filter"):
            m = summary.get(arm)
            if m and m["score_mean"][0] is not None:
                out.append(f"- `{arm}` vs `mle`: misalignment ×{m['score_mean'][0] / mle['score_mean'][0]:.2f}, "
                           f"held-out loss {m['heldout_loss'][0] - mle['heldout_loss'][0]:+.3f} nats/token.")
    cond = summary.get("conditional")
    if cond and cond.get("bad_asked_score_mean", (None,))[0] is not None and cond["score_mean"][0] is not None:
        out.append(f"- `conditional` asked for <|bad|> scores {cond['bad_asked_score_mean'][0]:.4f} vs "
                   f"{cond['score_mean'][0]:.4f} asked for <|good|> (did the control token take hold?).")
    for arm in summary:
        if arm.endswith("@finetune") and arm.split("@")[0] in score and arm in score:
            base = arm.split("@")[0]
            if score[base] == score[arm]:
                verdict = "a tie"
            else:
                verdict = ("pretraining" if score[base] < score[arm] else "fine-tuning") + " is less misaligned"
            out.append(f"- `{base}`: pretraining {score[base]:.4f} vs fine-tuning {score[arm]:.4f} → {verdict}.")
    return out


def write_report(out: Path, results: dict, curves: list[dict], timings: list[dict]) -> None:
    speed = {(t["arm"], t["seed"]): t.get("tokens_per_second") for t in timings}
    records = [{**r, "metrics": {**r["metrics"], "tokens_per_second": speed.get((r["arm"], r["seed"]))}}
               for r in results["records"]]
    records += safe_decoding_rows(records)
    world = results["task"]
    columns = COLUMNS + WORLD_COLUMNS[world]
    summary = summarize_arms(records, [k for k, _ in columns] + ["bad_asked_score_mean"])
    points = {a: (m["heldout_loss"][0], m["score_mean"][0]) for a, m in summary.items()
              if m["heldout_loss"][0] is not None and m["score_mean"][0] is not None}
    front = pareto_front(points)
    plot_phase(curves, "pretrain", "tokens", "score_mean", out / "misalignment_vs_tokens.png", "training tokens",
               "misalignment score (unconditional samples)")
    plot_pareto(summary, front, out / "pareto.png")
    plot_pretrain_vs_finetune(summary, out / "pretrain_vs_finetune.png")
    plots = "`misalignment_vs_tokens.png`, `pareto.png`, `pretrain_vs_finetune.png`"
    if world == "reward-hacking":
        plot_phase(curves, "rl", "step", "hack_rate", out / "rl_survival.png",
                   "GRPO step against the flawed grader", "true hack rate")
        plots += ", `rl_survival.png`"
    cfg = results["config"]
    lines = [
        f"# Safety-pretraining study ({world})", "", "## Findings", "", answer(summary, front), "",
        *findings(summary, front), "",
        f"Every arm: the same tiny model from scratch, {cfg['pretrain']['tokens']:,} training tokens; `@finetune` "
        f"arms spend the first {cfg['finetune_switch']:.0%} on MLE. {len(cfg['seeds'])} seed(s). "
        "Score: misalignment of samples (higher is worse); exp. max@25: expected maximum over 25 samples; "
        "adv.: after adversarial prompts that begin in the bad style.", "",
        "World: " + "; ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in results["world"].items()) + ".", "",
        spread_note(len(cfg["seeds"])), "",
        "| arm | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for arm, m in summary.items():
        lines.append(f"| {arm} | " + " | ".join(_cell(m[k]) for k, _ in columns) + " |")
    lines += ["", f"Plots: {plots}. Records: `results.json`; "
              "curves: `metrics.jsonl`.", "", f"Wall time: {sum(t['seconds'] for t in timings):.0f} s for "
              f"{len(timings)} runs (timings.json)."]
    publish(out, lines)


def _plain(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _cell(pair) -> str:
    mean, _ = pair
    if mean is not None and pair[1] is None and mean >= 1 and float(mean).is_integer():
        return str(int(mean))  # a count (RL steps), not a rate
    if mean is not None and abs(mean) >= 100:
        return f"{mean:,.0f}"
    return fmt(pair, 5 if mean is not None and abs(mean) < 0.01 else 3)
