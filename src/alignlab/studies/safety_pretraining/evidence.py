"""The safety-pretraining study's evidence: samples per objective."""

from __future__ import annotations

from pathlib import Path

from alignlab.studies.kit.evidence import arm_order, load, sample_label
from alignlab.studies.kit.html import browser, esc


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



def evidence(out: Path) -> str:
    order = {a: i for i, a in enumerate(arm_order(out))}
    files = sorted(load((out / "records").glob("samples-*.json")),
                   key=lambda d: (order.get(d["arm"], len(order)), d["seed"]))
    rows = [{**s, "arm": d["arm"], "seed": d["seed"]} for d in files for s in d["samples"]]
    if not rows:
        return ""
    filters = {"arm": list(dict.fromkeys(r["arm"] for r in rows)),
               "seed": sorted({str(r["seed"]) for r in rows}, key=int),
               "kind": sorted({r["kind"] for r in rows}), "label": sorted({sample_label(r) for r in rows})}
    note = ("<p>Samples per objective at the end of training: pycodestyle's violations highlighted line by line "
            "(PEP8 world) or the ground-truth label (reward-hacking world).</p>")
    return browser("Samples per objective", filters, [_pt_item(r) for r in rows], note)

