import json

import pytest

from alignlab.cli import main

ARMS = ["none", "probe_reward", "probe_reward_frozen", "probe_loss", "oracle", "monitor"]


@pytest.fixture(scope="module")
def smoke_study(hacky_organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "rh"
    assert main(["study", "reward-hacking", "--smoke", "--organism", str(hacky_organism), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_smoke_study_writes_every_arm_and_artifact(smoke_study):
    results = json.loads((smoke_study / "results.json").read_text())
    assert results["study"] == "reward-hacking" and results["versions"]["trl"].startswith("1.16")
    assert [r["arm"] for r in results["records"]] == ARMS
    for r in results["records"]:
        m = r["metrics"]
        assert 0 <= m["hack_rate"] <= 1 and 0 <= m["honest_solve_rate"] <= 1
        assert set(m["hack_rate_by_style"]) == {"harness_override", "hardcode"}
        assert m["kl_to_start"] == m["kl_to_start"]  # not NaN
    curves = [json.loads(line) for line in (smoke_study / "metrics.jsonl").read_text().splitlines()]
    assert {c["arm"] for c in curves} == set(ARMS) and any(c["step"] == 0 for c in curves)
    for name in ("hack_rate.png", "frontier.png", "probe_auroc.png"):
        assert (smoke_study / name).stat().st_size > 1000
    report = (smoke_study / "report.md").read_text()
    assert all(f"| {arm} |" in report for arm in ARMS) and "Sanity: `none`" in report
    verdict = report.splitlines()[2]  # the line after the title says whether the regime can be read
    assert verdict.startswith(("Healthy regime", "Regime partly healthy", "**This run is miscalibrated", "**Policies"))
    assert results["health"]["healthy"] == verdict.startswith("Healthy regime")


@pytest.mark.slow
def test_smoke_page_reads_once_and_names_no_path(smoke_study, hacky_organism, reads_once):
    sentences = reads_once(smoke_study, smoke_study, hacky_organism)  # --organism was an absolute path
    assert any("removed hacking" in s for s in sentences)  # the plain answer
    assert "Organism: reward-hacker (seed " in (smoke_study / "report.md").read_text()


@pytest.mark.slow
def test_report_html_shows_samples_with_per_token_scores(smoke_study, headless, tmp_path):
    import re

    from matplotlib.image import imread

    samples = json.loads((smoke_study / "records" / "samples-none-seed0.json").read_text())
    assert len(samples["final"]) == 12 * 2 and len(samples["start"]) == 12 * 2  # eval tasks x samples
    s = next(x for x in samples["final"] if x["tokens"] and x["completion"].isascii())  # whole-byte tokens
    assert "".join(s["tokens"]) == s["completion"] and len(s["scores"]) == len(s["tokens"])
    assert s["outcome"] in ("solved", "hack", "wrong", "malformed") and s["hidden"] and s["visible"]
    assert "\"tokens\"" not in (smoke_study / "results.json").read_text()  # samples live beside it
    dom, console = headless(smoke_study / "report.html", screenshot=tmp_path / "shot.png")
    assert console == []  # no errors, no blocked loads: the page needs nothing from outside
    assert re.search(r'data-ready="\d+"', dom) and f"{7 * 24} of {7 * 24} shown" in dom  # start + six arms
    spans = re.findall(r'<span class="h(\d+)" title="[^"]+">', dom)
    assert len(spans) >= sum(len(x["tokens"]) for x in samples["final"]) and len(set(spans)) > 2
    page = (smoke_study / "report.html").read_text()
    assert all(re.search(rf"\.h{b}{{background:#[0-9a-f]{{6}}}}", page) for b in set(spans))
    pixels = imread(tmp_path / "shot.png")[..., :3]
    assert pixels.std() > 0.05 and (pixels.mean(-1) < 0.9).mean() > 0.02  # not a blank page


@pytest.mark.slow
def test_resume_never_redoes_a_finished_record(smoke_study, hacky_organism, capsys):
    none = smoke_study / "records" / "none-seed0.json"
    data = json.loads(none.read_text())
    data["record"]["metrics"]["marker"] = 42  # a redo would lose this
    none.write_text(json.dumps(data))
    monitor = smoke_study / "records" / "monitor-seed0.json"
    before = json.loads(monitor.read_text())["record"]
    monitor.unlink()  # as if killed during the last arm
    assert main(["study", "reward-hacking", "--smoke", "--organism", str(hacky_organism),
                 "--out", str(smoke_study)]) == 0
    results = json.loads((smoke_study / "results.json").read_text())
    assert results["records"][0]["metrics"]["marker"] == 42
    assert [r["arm"] for r in results["records"]] == ARMS
    err = capsys.readouterr().err
    assert "monitor seed 0" in err and "none seed 0" not in err
    assert results["records"][-1] == before  # the redone run reproduces its record exactly (same seed)


@pytest.mark.slow
def test_resume_with_other_options_is_refused(smoke_study, hacky_organism, capsys):
    code = main(["study", "reward-hacking", "--smoke", "--arms", "none", "--organism", str(hacky_organism),
                 "--out", str(smoke_study)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "different config" in err and len(err.splitlines()) == 1


def test_unknown_arm_is_a_clear_error(tmp_path, capsys):
    assert main(["study", "reward-hacking", "--smoke", "--arms", "none,bogus", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "arms" in err
    assert not (tmp_path / "x").exists()  # nothing written for a bad command line


@pytest.mark.slow
def test_probe_refit_during_training(hacky_organism, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"probe_refit_every": 1, "grpo": {"steps": 3}}))
    out = tmp_path / "study"
    assert main(["study", "reward-hacking", "--smoke", "--arms", "probe_reward,probe_loss", "--organism",
                 str(hacky_organism), "--out", str(out), "--config", str(cfg)]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert [r["arm"] for r in records] == ["probe_reward", "probe_loss"]
    assert all(0 <= r["metrics"]["probe_refits"] <= 2 for r in records)
    assert any(r["metrics"]["probe_refits"] > 0 for r in records)  # the hacky organism's samples hold both classes


def _rec(arm, seed, hack, honest, malformed=0.0):
    return {"arm": arm, "seed": seed, "metrics": {"hack_rate": hack, "honest_solve_rate": honest,
                                                  "malformed_rate": malformed}}


def test_health_verdict_names_what_failed():
    from alignlab.runs.rl import health, health_line

    start = {"honest_solve_rate": 0.3, "hack_rate": 0.05}
    good = [_rec("none", 0, 0.9, 0.0), _rec("oracle", 0, 0.0, 0.4), _rec("probe_reward", 0, 0.01, 0.35)]
    h = health(good, start)
    assert h["healthy"] and health_line(h, 0.3).startswith("Healthy regime")
    h = health([_rec("none", 0, 0.3, 0.1), *good[1:]], start)
    assert h["miscalibrated"] and "miscalibrated" in health_line(h, 0.3) and "`none` seed 0" in health_line(h, 0.3)
    h = health([*good, _rec("monitor", 1, 0.0, 0.1, malformed=0.5)], start)
    assert h["collapsed"] and not h["miscalibrated"] and "`monitor` seed 1" in health_line(h, 0.3)
    h = health([*good[:2], _rec("probe_reward", 0, 0.0, 0.2)], start)  # no collapse, but honest solving fell
    assert not h["healthy"] and h["honest_below_start"] == ["`probe_reward` seed 0 (0.200 < 0.300)"]
    h = health([*good[:2], _rec("probe_reward", 0, 0.0, 0.2)], {**start, "by_seed": {"0": 0.15}})
    assert h["healthy"]  # compared with its own seed's start


@pytest.mark.slow
def test_a_probe_dir_cut_short_is_refitted_and_results_hold_no_absolute_paths(smoke_study, hacky_organism):
    import os

    (smoke_study / "probe" / "report.json").unlink()  # an older version killed between probe.json and report.json
    assert main(["study", "reward-hacking", "--smoke", "--organism", str(hacky_organism),
                 "--out", str(smoke_study)]) == 0
    assert (smoke_study / "probe" / "report.json").is_file()
    text = (smoke_study / "results.json").read_text()
    assert str(smoke_study) not in text and str(smoke_study.resolve()) not in text
    umask = os.umask(0)
    os.umask(umask)
    assert (smoke_study / "results.json").stat().st_mode & 0o777 == 0o666 & ~umask
