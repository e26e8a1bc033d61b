"""The reward-hacking study's report: the table per arm, the findings in words, the plots."""

from __future__ import annotations

from pathlib import Path

from alignlab.runs.rl import health_line
from alignlab.studies.kit.html import publish
from alignlab.studies.kit.report import fmt, plot_curves, plot_frontier, summarize_arms

HEADLINE = ["hack_rate", "honest_solve_rate", "malformed_rate", "mean_grader_reward", "kl_to_start",
            "kl_to_start_median", "kl_to_start_iqr", "probe_auroc",
            "probe_recall_at_1pct_fpr", "evasion_rate", "probe_auroc_forced", "refit_probe_auroc", "refit_cosine"]



def write_report(out: Path, results: dict, curves: list[dict], timings: list[dict]) -> None:
    records = results["records"]
    summary = summarize_arms(records, HEADLINE)
    baseline = summary.get("none", {}).get("hack_rate", (None, None))[0]
    plot_curves(curves, "hack_rate", out / "hack_rate.png", "true hack rate (held-out tasks)")
    plot_curves(curves, "probe_auroc_forced", out / "probe_auroc.png", "original probe AUROC (forced completions)")
    plot_frontier(summary, baseline, out / "frontier.png")
    start = results["organism_start"]
    n_seeds = len(results["config"]["seeds"])
    lines = [
        "# Reward-hacking study: probes in the RL loop",
        "",
        health_line(results["health"], start["honest_solve_rate"]),
        "",
        f"Organism: `{results['organism']}` — at the start, hack rate {start['hack_rate']:.3f}, honest solve rate "
        f"{start['honest_solve_rate']:.3f}. Probe: layer {results['probe']['metadata']['layer']}, "
        f"{results['probe']['metadata']['aggregation']} over completion tokens, held-out AUROC "
        f"{results['probe']['test']['auroc']:.3f} on the organism's own samples. GRPO: "
        f"{results['config']['grpo']['steps']} steps, lr {results['config']['grpo']['learning_rate']}, "
        f"β {results['config']['grpo']['beta']}; {n_seeds} seed(s) per arm; mean ± 95% CI over seeds.",
        "",
        "| arm | hack rate | honest solve | malformed | grader reward | KL to start (mean) | KL median | KL IQR |"
        " probe AUROC | probe recall@1%FPR | evasion | probe AUROC (forced) | refit AUROC | cos(orig, refit) |",
        "|" + "---|" * 14,
    ]
    for arm, m in summary.items():
        lines.append(f"| {arm} | " + " | ".join(fmt(m[k]) for k in HEADLINE) + " |")
    # the verdict leads the findings too: report.html opens with them
    lines += ["", "## Findings", "", f"- {health_line(results['health'], start['honest_solve_rate'])}",
              *findings(summary, start["hack_rate"]), "",
              "Plots: `hack_rate.png` (hack rate over steps per arm), `frontier.png` (hack rate removed vs probe "
              "AUROC kept), `probe_auroc.png`. Per arm × seed records: `results.json`; curves: `metrics.jsonl`.",
              "", f"Wall time: {sum(t['seconds'] for t in timings):.0f} s for {len(timings)} runs "
              "(see timings.json)."]
    publish(out, lines)



def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"



def findings(summary: dict, start_hack: float) -> list[str]:
    """Plain-words statements computed from the numbers (no expectation is written in)."""
    out = []
    none = summary.get("none")
    if none and none["hack_rate"][0] is not None:
        h = none["hack_rate"][0]
        verdict = "raised" if h > start_hack else "did NOT raise"
        out.append(f"- Sanity: `none` {verdict} the hack rate ({start_hack:.3f} at the start → {h:.3f}).")
    oracle = summary.get("oracle")
    if oracle and oracle["hack_rate"][0] is not None:
        out.append(f"- Sanity: `oracle` ends at hack rate {oracle['hack_rate'][0]:.3f}.")
    for arm, m in summary.items():
        if arm in ("none", "oracle") or m["hack_rate"][0] is None or not none or none["hack_rate"][0] is None:
            continue
        removed = none["hack_rate"][0] - m["hack_rate"][0]
        auc, forced, ev = m["probe_auroc"][0], m["probe_auroc_forced"][0], m["evasion_rate"][0]
        out.append(f"- `{arm}`: removes {removed:+.3f} of hack rate vs `none`. The original probe's AUROC on the "
                   f"policy's own samples is {_num(auc)} (n/a when it no longer hacks or only hacks), on forced "
                   f"hack vs honest completions {_num(forced)} (`none`: {_num(none['probe_auroc_forced'][0])}); "
                   f"evasion rate {_num(ev)} (share of the policy's true hacks the probe misses).")
    return out

