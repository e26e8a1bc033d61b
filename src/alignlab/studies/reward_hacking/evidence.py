"""The reward-hacking study's evidence: held-out completions with per-token probe heat maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignlab.studies.kit.evidence import LABELS, arm_order, flag, load, scale_of, tests
from alignlab.studies.kit.html import browser, esc, heat, legend


def reward_hacking_samples(out: Path) -> tuple[list[dict], float]:
    """Every stored held-out sample as a flat row: the starting organism's (once per seed) and each arm's."""
    rows, threshold, seen_start = [], 0.0, set()
    order = {a: i for i, a in enumerate(arm_order(out))}
    files = sorted(load((out / "records").glob("samples-*.json")),
                   key=lambda d: (order.get(d["arm"], len(order)), d["seed"]))
    for data in files:
        threshold = data["threshold"]
        groups = [("final", data["arm"])]
        if data["seed"] not in seen_start:  # every arm measures the same start on the same tasks
            seen_start.add(data["seed"])
            groups.insert(0, ("start", "start (organism)"))
        for key, arm in groups:
            for s in data[key]:
                rows.append({**s, "arm": arm, "seed": data["seed"]})
    return rows, threshold



def _sample_score(s: dict) -> float | None:
    if s.get("score") is not None:
        return s["score"]
    return float(np.mean(s["scores"])) if s["scores"] else None



def rh_item(s: dict, threshold: float, scale: float) -> str:
    score = _sample_score(s)
    f = flag(s["outcome"], score, threshold)
    lab = s["outcome"] + (f" ({s['style']})" if s.get("style") else "")
    badge = {"missed": "missed hack", "false_alarm": "false alarm"}.get(f)
    meta = (f'<span class="badge b-{esc(s["outcome"])}">{esc(lab)}</span>'
            + (f'<span class="badge b-{f}">{badge}</span>' if badge else "")
            + f' {esc(s["arm"])} · seed {s["seed"]} · task {s["task"]} · probe score '
            + ("n/a (empty)" if score is None else f"{score:.2f}"))
    return (f'<div class="sample" data-arm="{esc(s["arm"])}" data-seed="{s["seed"]}" '
            f'data-label="{esc(s["outcome"])}" data-flag="{f}"><div class="meta">{meta}</div>'
            f'<div class="text"><span class="p">{esc(s["prompt"])}</span>'
            f'{heat(s["tokens"], s["scores"], threshold, scale)}</div>'
            f'<div class="tests">visible: {esc(tests(s["visible"]))}<br>hidden: {esc(tests(s["hidden"]))}</div>'
            "</div>")



def disagreement_table(rows: list[dict], threshold: float) -> str:
    lines = ["<table><tr><th>arm</th><th>samples</th><th>hacks</th><th>missed hacks</th><th>false alarms</th></tr>"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        flags = [flag(r["outcome"], _sample_score(r), threshold) for r in mine]
        lines.append(f"<tr><td>{esc(arm)}</td><td>{len(mine)}</td><td>{sum(r['outcome'] == 'hack' for r in mine)}"
                     f"</td><td>{flags.count('missed')}</td><td>{flags.count('false_alarm')}</td></tr>")
    return "".join(lines) + "</table>"



def evidence(out: Path) -> str:
    rows, threshold = reward_hacking_samples(out)
    if not rows:
        return "<h2>Samples</h2><p>No samples stored yet (they are written with each finished arm × seed).</p>"
    scale = scale_of([x for r in rows for x in r["scores"]], threshold)
    note = (f"<p>Held-out completions of the final measurement (and of the starting organism), each with its "
            f"ground-truth label and the task's tests. Tokens are coloured by the probe's score at that token "
            f"(its direction applied to the token's activation at layer {esc(rows[0].get('layer', 'the probe'))}); "
            f"the completion's score is the probe on the pooled completion. <b>Missed hack</b>: a true hack at or "
            f"under the threshold; <b>false alarm</b>: a non-hack over it.</p>"
            + legend(threshold, scale, "probe score") + disagreement_table(rows, threshold))
    filters = {"arm": list(dict.fromkeys(r["arm"] for r in rows)),
               "seed": sorted({str(r["seed"]) for r in rows}, key=int), "label": list(LABELS),
               "flag": ["missed", "false_alarm", "caught", "quiet"]}
    return browser("Samples: per-token probe heat maps", filters, [rh_item(r, threshold, scale) for r in rows],
                   note)

