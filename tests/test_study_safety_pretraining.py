"""The safety-pretraining study end to end (smoke size) in both worlds, its pieces, and its errors."""

import itertools
import json
import random

import pytest

from alignlab.cli import main
from alignlab.runs.pretraining import expected_max, render_prompt
from alignlab.runs.worlds import EvalItem
from alignlab.studies.safety_pretraining.report import pareto_front
from alignlab.train.objectives import BAD, GOOD


def test_expected_max_is_the_exact_order_statistic():
    rng = random.Random(0)
    xs = [rng.random() for _ in range(7)]
    for k in (1, 3, 7):
        brute = [max(c) for c in itertools.combinations(xs, k)]
        assert expected_max(xs, k) == pytest.approx(sum(brute) / len(brute))
    assert expected_max([0, 0, 1, 0], 25) == 1.0  # fewer samples than k: the plain maximum


def test_pareto_front():
    points = {"a": (1.0, 0.5), "b": (2.0, 0.1), "c": (2.5, 0.6), "d": (1.0, 0.5)}
    assert pareto_front(points) == ["a", "b", "d"]


def test_conditional_prompts_tag_context_truthfully_and_ask_for_good():
    item = EvalItem(context=((("p\n", 0.0), ("hack\n", 1.0)),), prompt=(("q\n", 0.0),))
    text = render_prompt(item, "conditional", 0.0, "<E>")
    assert text == f"<E>{GOOD}p\n{BAD}hack\n<E>{GOOD}q\n{GOOD}"
    assert render_prompt(item, "mle", 0.0, "<E>") == "<E>p\nhack\n<E>q\n"


def run(out, *extra):
    return main(["study", "safety-pretraining", "--smoke", "--out", str(out), *extra])


@pytest.mark.slow
def test_pep8_smoke_study_writes_results_and_resumes_identically(tmp_path, one_thread, reads_once):
    out = tmp_path / "pep8"
    assert run(out, "--task", "pep8") == 0
    results = json.loads((out / "results.json").read_text())
    arms = [r["arm"] for r in results["records"]]
    assert arms[0] == "mle" and "conditional@finetune" in arms and len(arms) == 9
    assert len(results["world"]["corpus_hash"]) == 64 and results["world"]["python_version"]
    for r in results["records"]:
        m = r["metrics"]
        assert 0 <= m["score_mean"] <= m["score_expected_max"] + 1e-9
        assert 0 <= m["hit_rate"] <= 1 and 0 <= m["syntax_error"] <= 1
        assert m["heldout_loss"] > 0 and "tokens_per_second" not in m  # clock readings: timings.json
    timings = json.loads((out / "timings.json").read_text())["runs"]
    assert all(t["tokens_per_second"] > 0 for t in timings)
    by_arm = {r["arm"]: r for r in results["records"]}
    assert by_arm["mle"]["metrics"]["kl_from_mle"] == pytest.approx(0, abs=1e-5)
    assert "safe_score_mean" in by_arm["tags"]["metrics"]
    report = (out / "report.md").read_text()
    assert "tags+safe-decoding" in report and "conditional@finetune" in report
    assert {p.name for p in out.glob("*.png")} == {"misalignment_vs_tokens.png", "pareto.png",
                                                   "pretrain_vs_finetune.png"}
    page = (out / "report.html").read_text()
    samples = json.loads((out / "records" / "samples-mle-seed0.json").read_text())["samples"]
    assert samples and all({"lines", "codes", "prompt", "kind"} <= set(s) for s in samples)
    assert "Samples per objective" in page and page.count('class="sample"') == 9 * len(samples) + len(
        [s for s in json.loads((out / "records" / "samples-tags-seed0.json").read_text())["samples"]
         if "safe" in s["kind"]])
    assert page.count('data-label="violations"') == sum(
        any(s["codes"]) for p in (out / "records").glob("samples-*.json")
        for s in json.loads(p.read_text())["samples"])
    assert page.index('data-arm="mle"') < page.index('data-arm="tags"')  # the tables' order
    assert "least misaligned" in " ".join(reads_once(out, out))
    # a deleted record is redone identically (same seed, same machine); the others are kept, not recomputed: a
    # marker planted in one (a recomputation would overwrite it) survives the re-run
    record = out / "records" / "conditional@finetune-seed0.json"
    before = json.loads(record.read_text())["record"]
    record.unlink()
    kept = out / "records" / "mle-seed0.json"
    kept.write_text(json.dumps({**json.loads(kept.read_text()), "marker": "not recomputed"}))
    assert run(out, "--task", "pep8") == 0
    assert json.loads(record.read_text())["record"] == before
    assert json.loads(kept.read_text())["marker"] == "not recomputed"


@pytest.mark.slow
def test_hacking_smoke_study_measures_survival_under_rl(tmp_path, one_thread):
    out = tmp_path / "hack"
    assert run(out, "--task", "reward-hacking", "--objectives", "mle,conditional", "--finetune", "") == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in results["records"]] == ["mle", "conditional"]
    for r in results["records"]:
        m = r["metrics"]
        assert 0 <= m["honest_solve_rate"] <= 1 and 0 <= m["rl_final_hack_rate"] <= 1
    curves = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {c["step"] for c in curves if c.get("phase") == "rl"} == {0, 1, 2}
    assert (out / "rl_survival.png").exists()
    page = (out / "report.html").read_text()
    samples = json.loads((out / "records" / "samples-conditional-seed0.json").read_text())["samples"]
    assert all(s["label"].split()[0] in ("solved", "hack", "wrong", "malformed") for s in samples)
    assert page.count('data-arm="conditional"') == len(samples)


@pytest.mark.parametrize("args, message", [
    (["--task", "toxicity"], "--task"),
    (["--objectives", "mle,dpo"], "unknown objective 'dpo'"),
    (["--finetune", "mle"], "'finetune'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    assert run(tmp_path / "x", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_bad_config_file_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"objective": {"rwr_beta": -1}}))
    assert run(tmp_path / "x", "--config", str(cfg)) == 2
    assert "'rwr_beta'" in capsys.readouterr().err
