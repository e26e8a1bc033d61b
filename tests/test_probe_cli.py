import json

import pytest

from alignlab.cli import main
from alignlab.probes import LinearProbe


@pytest.mark.slow
def test_probe_fit_eval_sweep_on_an_organism(hacky_organism, tmp_path, capsys):
    probe_dir = tmp_path / "probe"
    args = ["--n-tasks", "80", "--samples", "4"]
    assert main(["probe", "fit", str(hacky_organism), "--out", str(probe_dir), "--layer", "-1", *args]) == 0
    report = json.loads((probe_dir / "report.json").read_text())
    assert (probe_dir / "scores.png").stat().st_size > 1000
    assert report["probe"]["layer"] == 1 and report["data"]["n_hacks"] > 10
    assert report["test"]["auroc"] > 0.9  # hack completions are spelled differently: easy for the probe
    probe = LinearProbe.load(probe_dir)
    assert probe.metadata["position"] == "completion" and probe.d_model == 64

    ev = tmp_path / "eval.json"
    assert main(["probe", "eval", str(hacky_organism), str(probe_dir), "--out", str(ev), *args]) == 0
    fresh = json.loads(ev.read_text())
    assert fresh["test"]["auroc"] > 0.9 and fresh["n_samples"] > 100

    sweep_dir = tmp_path / "sweep"
    assert main(["probe", "sweep", str(hacky_organism), "--out", str(sweep_dir), *args]) == 0
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert set(sweep["positions"]) == {"completion", "prompt_last"}
    assert len(sweep["positions"]["completion"]["auroc"]) == 2
    assert (sweep_dir / "sweep_completion.png").exists() and (sweep_dir / "sweep_prompt_last.png").exists()


@pytest.mark.slow
def test_probe_layer_mismatch_is_a_one_line_error(hacky_organism, tmp_path, capsys):
    import numpy as np

    from alignlab.probes import fit_logistic

    X = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32)
    probe = fit_logistic(X, np.arange(20) % 2, metadata={"layer": 7, "position": "completion"})
    probe.save(tmp_path / "p")
    code = main(["probe", "eval", str(hacky_organism), str(tmp_path / "p"), "--n-tasks", "20"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "layer" in err and len(err.splitlines()) == 1


def test_probe_on_missing_files_is_a_clear_error(tmp_path, capsys):
    assert main(["probe", "eval", str(tmp_path), str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert main(["probe", "fit", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
