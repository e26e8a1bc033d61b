"""report.html: one self-contained page per study run, rendered from its report.md, its PNGs and its stored
samples. Styles are inline, images are data URIs and the only script filters samples: the file can be mailed,
opened offline, or attached to a paper's supplement.

Order: report.md as written (every study's opens with its findings, the same text a reader of the Markdown gets),
then the plots, then the evidence (each study's samples: `StudyKind.evidence`).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

from alignlab import AlignlabError
from alignlab.artifacts import read_json, write_text_atomic
from alignlab.studies import STUDIES  # the one list of studies

N_BINS = 11  # colour bins per side-symmetric scale; bin N_BINS // 2 is "at the threshold"

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f3f3f3}code{background:#f3f3f3;padding:0 3px;border-radius:3px}
img{max-width:100%}.plots{display:flex;flex-wrap:wrap;gap:1em}.plots figure{margin:0;max-width:560px}
figcaption{font-size:12px;color:#555}.notice{background:#fff4d6;border:1px solid #e0c060;padding:.5em 1em}
.filters{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ddd;z-index:1}
.filters label{margin-right:1em}.sample{border:1px solid #ccc;border-radius:4px;margin:.5em 0;padding:.4em .6em;
content-visibility:auto;contain-intrinsic-size:auto 140px}
.sample[data-flag=missed],.sample[data-flag=false_alarm]{border:2px solid #c00}
.meta{font-size:12px;color:#444}.badge{display:inline-block;padding:0 5px;border-radius:3px;margin-right:4px;
background:#eee}.b-missed,.b-false_alarm{background:#c00;color:#fff}.b-hack{background:#f7c6c6}
.b-solved{background:#c9f0c9}.b-wrong{background:#eee3c0}.b-malformed{background:#ddd}
.text{font:12px/1.5 ui-monospace,monospace;white-space:pre-wrap;margin:.3em 0}
.text .p{color:#777}.tests{font:11px ui-monospace,monospace;color:#555}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:.6em}.line-bad{background:#ffd9d9}
.codes{color:#a00;font-size:11px}.legend span{padding:0 6px}.nw{white-space:nowrap}
"""
# blue (below the threshold) -> white -> red (above): one class per bin keeps every token's markup short
CSS += "".join(f".h{i}{{background:{c}}}" for i, c in enumerate(
    ["#3b6fd1", "#6b93dc", "#9bb7e8", "#c6d5f2", "#e6edf9", "#ffffff", "#fbe3e0", "#f6c0b8", "#ef9484",
     "#e5624d", "#d73020"]))

SCRIPT = """
document.querySelectorAll('.browser').forEach(function (box) {
  var selects = box.querySelectorAll('select[data-key]'), items = box.querySelectorAll('.sample'),
      count = box.querySelector('.count');
  function apply() {
    var shown = 0;
    items.forEach(function (el) {
      var ok = true;
      selects.forEach(function (s) { if (s.value !== '*' && el.dataset[s.dataset.key] !== s.value) ok = false; });
      el.hidden = !ok;
      if (ok) shown++;
    });
    count.textContent = shown + ' of ' + items.length + ' shown';
  }
  // a link can preset the filters: report.html#flag=missed&arm=none
  var want = new URLSearchParams(location.hash.slice(1));
  selects.forEach(function (s) {
    var v = want.get(s.dataset.key);
    if (v !== null && Array.prototype.some.call(s.options, function (o) { return o.value === v; })) s.value = v;
    s.addEventListener('change', apply);
  });
  apply();
});
document.body.dataset.ready = Math.round(performance.now());  // ms to parse the page and run this script
"""

_MD = MarkdownIt("commonmark", {"html": False}).enable("table")


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def markdown(text: str, images_from: Path | None = None) -> str:
    """Markdown -> HTML (tables on, raw HTML escaped); `![..](x.png)` images found in `images_from` inlined."""
    out = _MD.render(text)
    if images_from is not None:
        def inline(m):
            path = images_from / html.unescape(m[1])
            return f'src="{data_uri(path)}"' if path.is_file() else m[0]

        out = re.sub(r'src="([^"/]+\.png)"', inline, out)
    # a cell's spread, "(0.846–2.533)" or "[0.9, 1.0]", is never broken across lines (the mean may sit above it)
    return re.sub(r"<td>([^<]*?) ([(\[][^<]*?[)\]])</td>",
                  lambda m: f'<td>{m[1]} <span class="nw">{m[2]}</span></td>', out)


def plots(out: Path, skip: set[str]) -> str:
    figs = [f'<figure><img alt="{esc(p.name)}" src="{data_uri(p)}"><figcaption>{esc(p.name)}</figcaption></figure>'
            for p in sorted(out.glob("*.png")) if p.name not in skip]
    return f'<h2>Plots</h2><div class="plots">{"".join(figs)}</div>' if figs else ""


def heat(tokens: list[str], scores: list[float], threshold: float, scale: float, extra=None) -> str:
    """Tokens coloured by (score - threshold) / scale: red above the threshold, blue below; hover for the
    score (and `extra[i]`, e.g. the top SAE feature)."""
    half = N_BINS // 2
    spans = []
    for i, (tok, s) in enumerate(zip(tokens, scores, strict=True)):
        b = half + max(-half, min(half, round((s - threshold) / scale * half)))
        tip = f"{s:.2f}" + (f" {extra[i]}" if extra else "")
        spans.append(f'<span class="h{b}" title="{esc(tip)}">{esc(tok)}</span>')
    return "".join(spans)


def legend(threshold: float, scale: float, what: str) -> str:
    half = N_BINS // 2
    cells = "".join(f'<span class="h{i}">{threshold + (i - half) / half * scale:+.1f}</span>' for i in range(N_BINS))
    return f'<p class="legend">{esc(what)} per token: {cells} (threshold {threshold:.2f} is white)</p>'


def browser(title: str, filters: dict[str, list[str]], items: list[str], note: str = "") -> str:
    """A filterable list of samples: `items` are `.sample` elements whose data-* attributes match `filters`."""
    selects = "".join(
        f'<label>{esc(key)} <select data-key="{esc(key)}"><option value="*">all</option>'
        + "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values) + "</select></label>"
        for key, values in filters.items())
    anchor = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return (f'<h2 id="{anchor}">{esc(title)}</h2>{note}<div class="browser"><div class="filters">{selects}'
            f'<span class="count"></span></div>{"".join(items)}</div>')


def shell(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{body}<script>{SCRIPT}</script></body></html>")


def study_of(out: Path) -> str:
    """The study that wrote `out`: from results.json when finished, else from what a partial run leaves."""
    if not out.is_dir():
        raise AlignlabError(f"report: {out} is not a directory")
    if (out / "results.json").exists():
        study = read_json(out / "results.json", "study results").get("study")
        if study in STUDIES:
            return study
        raise AlignlabError(f"report: {out / 'results.json'} names no known study ({study!r})")
    if not (out / "config.json").exists():
        raise AlignlabError(f"report: {out} holds neither results.json nor config.json: not a study directory")
    config = read_json(out / "config.json", "study config")
    # each study's config has a field no other has (`StudyKind.marker`)
    for study in STUDIES:
        if STUDIES[study].marker in config:
            return study
    raise AlignlabError(f"report: {out / 'config.json'} is not a study config")


def summary_html(out: Path) -> tuple[str, str, set[str]]:
    """(title, findings + tables as HTML, images the Markdown already shows) for one run directory."""
    md_path = out / "report.md"
    if not md_path.exists():
        done = sorted(p.stem for p in (out / "records").glob("*.json") if not p.stem.startswith("samples-"))
        body = (f'<h1>{esc(study_of(out))}: partial run</h1><p class="notice">No report.md yet: the study has not '
                f"finished. Finished pieces: {esc(', '.join(done) or 'none')}. Re-run the study with the same "
                "--out to resume; the evidence below is what is stored so far.</p>")
        return f"{study_of(out)} (partial)", body, set()
    md = md_path.read_text()
    title = next((line[2:] for line in md.splitlines() if line.startswith("# ")), study_of(out))
    used = set(re.findall(r"!\[[^\]]*\]\(([^)/]+\.png)\)", md))
    return title, markdown(md, images_from=out), used


def page(out: Path) -> str:
    out = Path(out)
    study = study_of(out)
    title, body, used = summary_html(out)
    return shell(title, body + plots(out, used) + STUDIES[study].render_evidence(out))


def compare_page(dirs: list[Path]) -> str:
    """One page across runs of the same study: each run's findings, tables and plots, in the order given."""
    dirs = [Path(d) for d in dirs]
    studies = {d: study_of(d) for d in dirs}
    if len(set(studies.values())) > 1:
        kinds = ", ".join(f"{d} is {s}" for d, s in studies.items())
        raise AlignlabError(f"report: cannot compare runs of different studies ({kinds})")
    parts = []
    for d in dirs:
        _, body, used = summary_html(d)
        body = re.sub(r"<(/?)h([1-5])>", lambda m: f"<{m[1]}h{int(m[2]) + 1}>", body)  # the run's title is h2
        parts.append(f'<section><h1 style="font-size:1.3em">{esc(d)}</h1>{body}{plots(d, used)}</section>')
    study = next(iter(studies.values()))
    return shell(f"{study}: {len(dirs)} runs compared",
                 f"<h1>{esc(study)}: {len(dirs)} runs compared</h1>" + "<hr>".join(parts))


def write_page(out: Path) -> Path:
    write_text_atomic(Path(out) / "report.html", page(out))
    return Path(out) / "report.html"


def publish(out: Path, lines: list[str]) -> None:
    """Write report.md (the Markdown lines) and, beside it, report.html."""
    write_text_atomic(Path(out) / "report.md", "\n".join(lines) + "\n")
    write_page(out)
