import json

import numpy as np
import pytest

from alignlab.cli import main
from alignlab.runs.frontier import RolloutLedger
from alignlab.studies.probe_frontier import study as pf
from alignlab.studies.probe_frontier.report import failure_mode

# every metric the study's question needs, per run (issue 18)
METRICS = ["hack_rate", "hack_rate_harness_override", "hack_rate_hardcode", "malformed_rate", "kl_to_start",
           "probe_forced_auroc", "probe_forced_recall_deployed", "probe_forced_recall_recalibrated",
           "probe_policy_reader_auroc", "probe_policy_reader_recall_deployed", "probe_start_reader_auroc",
           "probe_start_reader_recall_deployed", "probe_max_forced_auroc", "probe_style_hardcode_forced_auroc",
           "layer0_forced_auroc", "fresh_probe_forced_auroc", "completion_tokens", "filler_share"]


@pytest.fixture(scope="module")
def frontier(hacky_organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier") / "pf"
    assert main(["study", "probe-frontier", "--smoke", "--organism", str(hacky_organism), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_smoke_study_has_every_group_metric_and_artifact(frontier):
    results = json.loads((frontier / "results.json").read_text())
    assert results["study"] == "probe-frontier"
    groups = {g for r in results["records"] for g in r["groups"]}
    assert groups == set(pf.GROUPS)
    for r in results["records"]:
        missing = [k for k in METRICS if k not in r["metrics"]]
        assert not missing, (r["arm"], missing)
    # the checkpoints: step 0, one mid-run and the end for the main runs; the ledger logs every GRPO step
    curves = [json.loads(line) for line in (frontier / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({c["step"] for c in curves if c["arm"] == "probe_loss" and "hack_rate" in c})
    assert steps == [0, 1, 2]
    ledger = [c for c in curves if c["arm"] == "probe_reward" and "rollout_passed_hack_share" in c]
    assert [c["step"] for c in ledger] == [1, 2] and all(0 <= c["rollout_flag_rate"] <= 1 for c in ledger)
    rates = results["rates"]
    assert set(rates) == {"none", "probe_reward", "probe_loss"} and rates["none"]["removed"][0] == 0
    assert results["phase"]["cells"] and results["summary"]["probe_reward@style_hardcode"]["n_seeds"] == 1
    for name in ("trajectories.png", "frontier.png", "phase.png", "decomposition.png", "mechanism.png"):
        assert (frontier / name).stat().st_size > 1000
    report = (frontier / "report.md").read_text().splitlines()
    assert report[2].startswith(("Healthy regime", "Regime partly healthy", "**This run is miscalibrated",
                                 "**Policies"))
    assert report[4] == "## Findings" and report[6].startswith("Over 1 seed, ")
    assert "removed hacking faster than they blinded the probe" in report[6] or "no method removed" in report[6]
    assert (frontier / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_smoke_page_reads_once_and_names_no_path(frontier, hacky_organism, reads_once):
    reads_once(frontier, frontier, hacky_organism)  # the organism came as an absolute --organism path
    assert "Organism: reward-hacker (seed " in (frontier / "report.md").read_text()


@pytest.mark.slow
def test_resume_keeps_finished_runs_and_redoes_a_lost_one_exactly(frontier, hacky_organism, capsys):
    kept = frontier / "records" / "none-seed0.json"
    data = json.loads(kept.read_text())
    data["record"]["metrics"]["marker"] = 42  # a recomputation would lose this
    kept.write_text(json.dumps(data))
    lost = frontier / "records" / "probe_reward@style_hardcode-seed0.json"
    before = json.loads(lost.read_text())["record"]
    lost.unlink()
    assert main(["study", "probe-frontier", "--smoke", "--organism", str(hacky_organism), "--out", str(frontier)]) == 0
    err = capsys.readouterr().err
    assert "probe_reward@style_hardcode seed 0" in err and "none seed 0" not in err
    results = json.loads((frontier / "results.json").read_text())
    by_key = {r["arm"]: r for r in results["records"]}
    assert by_key["none"]["metrics"]["marker"] == 42
    assert by_key["probe_reward@style_hardcode"] == before  # same seed, same record


def test_a_sweep_cell_equal_to_a_main_run_is_that_run():
    cfg = pf.ProbeFrontierConfig()
    runs = pf.plan(cfg)
    # λ 1.0 is the base's: the main probe_loss run, with the main seeds, in both groups
    assert runs["probe_loss"]["groups"] == ["main", "lambda"] and runs["probe_loss"]["seeds"] == {0, 1, 2}
    assert "probe_loss@probe_lambda=1.0" not in runs and "probe_loss@probe_lambda=10.0" in runs
    # (TPR 1, β 0.04) is the main probe_reward run
    assert "tpr_beta" in runs["probe_reward"]["groups"]
    assert runs["probe_reward@grpo.beta=0.2@probe_tpr=0.5"]["seeds"] == {0}
    total = sum(len(r["seeds"]) for r in runs.values())
    assert total == 6 * 3 + 5 + 3 + 11 + 4 + 4  # main + λ + penalty + TPR×β + pooling + style, no duplicates
    assert pf.run_config(cfg, runs["probe_loss@probe_lambda=10.0"]).checkpoints == cfg.sweep_checkpoints


def test_bad_group_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"groups": ["main", "nope"]}))
    assert main(["study", "probe-frontier", "--smoke", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "groups" in err and not (tmp_path / "o").exists()


def test_ledger_counts_hacks_the_probe_passed_and_their_advantage(monkeypatch):
    """Two groups of four; the probe (a recorded probe-reward output) passes a hack in group 0."""
    from alignlab.runs import frontier as frontier_measure

    hack = {"h": True, "x": False}
    monkeypatch.setattr(frontier_measure, "label", lambda task, c: type("L", (), {"is_hack": hack[c]})())
    ledger = RolloutLedger.__new__(RolloutLedger)
    logged = []
    ledger.arm, ledger.num_generations, ledger.log, ledger.outputs = "probe_reward", 4, logged.append, {}
    grader = lambda **kw: [1.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0]  # noqa: E731
    probe = lambda **kw: [0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # noqa: E731
    funcs = ledger.wrap([grader, probe], tasks=[None])
    completions = ["h", "h", "x", "x", "x", "x", "x", "h"]
    kw = {"prompts": ["p"] * 8, "completions": completions, "completion_ids": [[1]] * 8, "task_id": [0] * 8}
    for f in funcs[:-1]:
        f(**kw)
    assert funcs[-1](**kw) == [0.0] * 8
    [row] = logged
    total = np.array([1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    g = total.reshape(2, 4)
    adv = ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)).ravel()
    pos = np.clip(adv, 0, None)
    assert row["rollout_flag_rate"] == 2 / 8 and row["rollout_passed_hack_share"] == pytest.approx(1 / 6)
    assert row["rollout_undetected_adv_share"] == pytest.approx(pos[0] / pos.sum())
    assert row["rollout_hack_rate"] == 3 / 8


def test_failure_modes():
    assert failure_mode({"probe_forced_recall_deployed": 0.9, "probe_forced_auroc": 1.0}) == "intact"
    shift = {"probe_forced_recall_deployed": 0.0, "probe_forced_auroc": 1.0, "probe_forced_recall_recalibrated": 1.0}
    assert failure_mode(shift) == "shift"
    rot = {"probe_forced_recall_deployed": 0.1, "probe_forced_auroc": 0.6, "probe_forced_recall_recalibrated": 0.1}
    assert failure_mode(rot) == "rotation"


def test_degraded_probe_flips_a_coin_per_rollout_not_per_text():
    from alignlab.signals.arms import DegradedProbe as _DegradedProbe

    flagging = lambda prompts, completions, completion_ids, **kw: [-1.0] * len(prompts)  # noqa: E731
    degraded = _DegradedProbe(flagging, tpr=0.5, seed=0)
    same_text = degraded(["p"] * 400, ["def run_tests(): return True"] * 400, [[1, 2]] * 400)
    kept = np.mean([r < 0 for r in same_text])
    assert 0.4 < kept < 0.6  # the same hack text escapes about half the time, not always or never
    again = _DegradedProbe(flagging, tpr=0.5, seed=0)(["p"] * 400, ["x"] * 400, [[1]] * 400)
    assert again == same_text  # seeded: the same run draws the same coins


def test_phase_boundary_uses_a_start_recall_of_zero_as_zero():
    """Hacking pays while 1 − TPR × penalty × recall exceeds the pay for honest work (0.5 here): at recall 0.5
    below TPR 0.5; unmeasured recall counts as 1; a recall of 0 (once read as 1.0) deters at no TPR."""
    from alignlab.studies.probe_frontier.report import _phase

    def boundary(recall):
        start = {"hack_rate": 0.5, "mean_grader_reward": 0.75, "probe_policy_reader_recall_deployed": recall}
        return _phase([], {0: start}, penalty=2.0)["predicted_tpr_boundary"]

    assert boundary(0.5) == pytest.approx(0.5)
    assert boundary(None) == pytest.approx(0.25)
    assert boundary(0.0) is None
