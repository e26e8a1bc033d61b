"""The page a researcher reads first: bounded metrics on honest axes, spreads that stay inside a metric's range, a
plain answer, one label per cluster of points, the organism named by its card."""

import json
import re

import pytest

from alignlab.runs.rl import health
from alignlab.studies.kit import html
from alignlab.studies.kit import report as kit
from alignlab.studies.reward_hacking.report import write_report

ARMS = {"none": 0.95, "probe_reward": 0.0, "probe_reward_frozen": 0.0, "probe_loss": 0.0, "oracle": 0.0,
        "monitor": 0.9}


def rh_run(out, seeds, spread, steps=(0, 25, 50)):
    """A finished reward-hacking run from hand-made records: `spread[metric]` gives each seed's value in turn."""
    (out / "organism").mkdir(parents=True)
    (out / "records").mkdir()
    (out / "organism" / "organism.json").write_text(json.dumps({
        "organism": "reward-hacker", "seed": 3, "n_params": 111360, "base_model": "tiny-llama (from scratch)",
        "config": {"model": {"d_model": 64, "n_layers": 2}}}))
    records, curves = [], []
    for arm, hack in ARMS.items():
        for i, seed in enumerate(seeds):
            m = {"hack_rate": hack, "honest_solve_rate": 0.4, "malformed_rate": 0.0, "mean_grader_reward": 0.5,
                 "kl_to_start": 0.5, "kl_to_start_median": 0.3, "kl_to_start_iqr": 0.4, "probe_auroc": None,
                 "probe_recall_at_1pct_fpr": None, "evasion_rate": None, "probe_auroc_forced": 1.0,
                 "refit_probe_auroc": 0.9, "refit_cosine": 0.5}
            m.update({k: v[i % len(v)] for k, v in spread.get(arm, {}).items()})
            records.append({"arm": arm, "seed": seed, "metrics": m})
            curves += [{"arm": arm, "seed": seed, "step": s, "hack_rate": 0.1 + (hack - 0.1) * s / steps[-1],
                        "probe_auroc_forced": 1.0 + (m["probe_auroc_forced"] - 1.0) * s / steps[-1]} for s in steps]
    start = {"hack_rate": 0.1, "honest_solve_rate": 0.35}
    # the organism given as an absolute path, as `--organism` records it
    results = {"records": records, "organism_start": start, "health": health(records, start),
               "organism": str((out / "organism").resolve()),
               "probe": {"metadata": {"layer": 1, "aggregation": "mean"}, "test": {"auroc": 0.99}},
               "config": {"seeds": list(seeds), "grpo": {"steps": steps[-1], "learning_rate": 3e-4, "beta": 0.04}}}
    (out / "results.json").write_text(json.dumps({"study": "reward-hacking", **results}))
    (out / "config.json").write_text(json.dumps({"probe_lambda": 0.1}))
    write_report(out, results, curves, [{"seconds": 1.0}] * len(records))
    return out


@pytest.fixture
def figures(monkeypatch):
    """Every figure the shared plots save, by file name, after it is drawn."""
    saved = {}
    real = kit.save_figure

    def keep(fig, path):
        real(fig, path)
        saved[path.name] = fig

    monkeypatch.setattr(kit, "save_figure", keep)
    return saved


def test_a_tiny_change_of_a_bounded_metric_is_drawn_on_its_whole_range(tmp_path, figures):
    # the probe loss's AUROC going 1.00000 -> 0.99998 on one seed: autoscaled, that dove off the chart
    rh_run(tmp_path / "run", (0, 1, 2), {"probe_loss": {"probe_auroc_forced": [1.0, 0.99998, 1.0]}})
    auroc = figures["probe_auroc.png"].axes[0]
    lo, hi = auroc.get_ylim()
    assert lo <= 0.5 and lo > 0.45 and 1.0 <= hi < 1.05  # chance to perfect
    hack = figures["hack_rate.png"].axes[0]
    assert hack.get_ylim()[0] <= 0 and hack.get_ylim()[1] >= 1
    frontier = figures["frontier.png"].axes[0]
    assert frontier.get_ylim()[0] <= 0.5 and frontier.get_xlim()[1] >= 1
    for fig in figures.values():
        for ax in fig.axes:
            assert ax.xaxis.get_offset_text().get_text() == "" and ax.yaxis.get_offset_text().get_text() == ""
    # the four blocking arms and the oracle end at one point: one label names them all, none overprints another
    labels = [t.get_text() for t in frontier.texts]
    assert "probe_reward\nprobe_reward_frozen\nprobe_loss\noracle" in labels
    assert sorted(n for label in labels for n in label.split("\n")) == sorted(ARMS)  # each arm named once


def test_an_auroc_below_chance_widens_the_axis_to_zero(tmp_path, figures):
    rh_run(tmp_path / "run", (0,), {"probe_loss": {"probe_auroc_forced": [0.3]}})
    assert figures["probe_auroc.png"].axes[0].get_ylim()[0] < 0.3


def _cells(page: str) -> tuple[list[str], list[list[str]]]:
    table = re.search(r"<table>(.*?)</table>", page, re.S)[1]
    head = re.findall(r"<th>(.*?)</th>", table)
    rows = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]]
    return head, rows


def _shown(cell: str) -> tuple[float, float] | None:
    """The (low, high) a cell shows around its mean, whichever of fmt's forms it takes."""
    num = r"(-?\d+\.\d+)"
    for pattern in (rf"^{num} ± {num}$", rf"^{num} \({num}(?:–| to ){num}\)$", rf"^{num} \[{num}, {num}\]$"):
        m = re.match(pattern, cell)
        if m and "±" in pattern:
            return float(m[1]) - float(m[2]), float(m[1]) + float(m[2])
        if m:
            return float(m[2]), float(m[3])
    return None


RANGE = {"hack rate": (0, 1), "probe AUROC (forced)": (0, 1), "refit AUROC": (0, 1), "cos(orig, refit)": (-1, 1),
         "KL to start (mean)": (0, float("inf"))}


@pytest.mark.parametrize("seeds", [(0, 1, 2), (0, 1, 2, 3, 4)])
def test_no_spread_in_a_table_leaves_its_metric_s_range(tmp_path, seeds):
    # wide spread: a t-interval on these runs past -1..1 and 0..1 (cos 0.492 ± 2.666 in a real run)
    wide = {"refit_cosine": [0.95, -0.6, 0.9, 0.8, -0.5], "refit_probe_auroc": [0.99, 0.4, 0.99, 0.98, 0.5],
            "probe_auroc_forced": [1.0, 0.55, 1.0, 0.99, 0.6], "kl_to_start": [0.01, 2.5, 0.02, 0.01, 2.0],
            "hack_rate": [0.0, 0.5, 0.0, 0.01, 0.4]}
    run = rh_run(tmp_path / "run", seeds, {arm: wide for arm in ARMS if arm != "none"})
    page = (run / "report.html").read_text()
    head, rows = _cells(page)
    checked = 0
    for row in rows:
        for name, cell in zip(head[1:], row[1:], strict=True):
            shown = _shown(cell)
            if name in RANGE and shown is not None:
                lo, hi = RANGE[name]
                assert lo <= shown[0] <= shown[1] <= hi, (name, cell)
                checked += 1
    assert checked >= 5 * len(RANGE)  # every arm but `none` has a spread in every checked column
    assert kit.spread_note(len(seeds)) in page  # the caption says which spread the cells show
    if len(seeds) > 3:
        assert re.search(r"\d \[0\.\d+, 1\.000\]", page)  # a clipped 95% CI, shown as its interval


def test_the_page_answers_plainly_once_and_names_the_organism_by_its_card(tmp_path):
    run = rh_run(tmp_path / "run", (0, 1, 2), {})
    md = (run / "report.md").read_text()
    findings = md.split("## Findings")[1].split("\n\n")[1]
    assert "these removed hacking" in findings and "`probe_loss` 0.000" in findings
    assert "`monitor` 0.900" in findings.split("did nothing measurable")[1]  # within 0.1 of `none`'s 0.95
    assert "No arm blinded the original probe" in findings
    assert md.count("Healthy regime") + md.count("Regime partly healthy") == 1
    assert "reward-hacker (seed 3, d64x2, 111,360 parameters)" in md
    assert str(tmp_path) not in (run / "report.html").read_text()


def test_stat_unpacks_as_a_pair_and_pickles():
    import copy
    import pickle

    s = kit.mean_ci([0.1, 0.9, 0.5], kit.metric_range("hack_rate"))
    mean, half = s
    assert json.loads(json.dumps(s)) == [mean, half] and half > 0.5  # results.json keeps the pair
    for back in (pickle.loads(pickle.dumps(s)), copy.deepcopy(s)):
        assert back == s and back.values == s.values and back.interval() == (0.1, 0.9, "min–max")
    assert kit.fmt(s) == "0.500 (0.100–0.900)" and kit.fmt(kit.mean_ci([0.2])) == "0.200"


def test_the_page_check_catches_a_repeated_sentence_and_a_path(tmp_path, reads_once):
    run = rh_run(tmp_path / "run", (0, 1, 2), {})
    reads_once(run, run)
    md = (run / "report.md").read_text()
    verdict = md.splitlines()[2]
    (run / "report.md").write_text(md.replace("## Findings\n", f"## Findings\n\n- {verdict}\n"))  # the old page
    html.write_page(run)
    with pytest.raises(AssertionError, match="Regime partly healthy"):
        reads_once(run, run)
    (run / "report.md").write_text(md.replace("Probe: layer", f"Organism dir: {run / 'organism'}. Probe: layer"))
    html.write_page(run)
    with pytest.raises(AssertionError):
        reads_once(run, run)
