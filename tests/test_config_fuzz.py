"""Random config overrides generated from the dataclass types: the CLI either accepts them (and then the
libraries do too) or refuses them with one `error:` line, never a traceback. Cheap: every run stops at the
output check, which comes after validation."""

import dataclasses
import json
import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.cli import main
from alignlab.config import override, validate
from alignlab.organisms import reward_hacker as rh
from alignlab.studies.reward_hacking import study as reward_hacking

WRONG = st.one_of(st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2), st.booleans())


def _weighted(usual, unusual, wild):
    return st.integers(0, 9).flatmap(lambda i: wild if i == 0 else unusual if i < 3 else usual)


def _value(current, hint):
    if dataclasses.is_dataclass(current):
        return _overrides(current)
    origin = typing.get_origin(hint)
    if hint is bool:
        good = st.booleans()
    elif hint is int:
        good = _weighted(st.just(current), st.integers(-3, 12), st.integers(-(2**70), 2**70))
    elif hint is float:
        good = _weighted(st.just(current), st.floats(-2, 2), st.floats(allow_nan=True, allow_infinity=True))
    elif hint is str:
        good = st.one_of(st.just(current), st.text(max_size=6))
    elif origin is tuple:
        item = typing.get_args(hint)[0]
        good = st.lists(_value(current[0] if current else item(), item), max_size=3)
    elif origin is dict:
        good = st.dictionaries(st.sampled_from([*current, "other"]), _value(0.0, float), max_size=3)
    else:
        good = st.just(current)
    # mostly the right type and mostly small, so that some configs pass and ranges get exercised too
    return st.integers(0, 19).flatmap(lambda i: WRONG if i == 0 else good)


def _overrides(config):
    hints = typing.get_type_hints(type(config))
    return st.fixed_dictionaries({}, optional={f.name: _value(getattr(config, f.name), hints[f.name])
                                               for f in dataclasses.fields(config)})


def _run(tmp_path, capsys, changes, argv):
    (tmp_path / "c.json").write_text(json.dumps(changes))
    code = main([*argv, "--config", str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    # refused by validation, not by a library error caught at the CLI boundary ("error: <command>: <Type>: …")
    assert not lines[0].startswith(f"error: {argv[0]} {argv[1]}:"), lines[0]
    return lines[0]


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(_overrides(rh.smoke_config(0)))
def test_organism_config_overrides_run_or_fail_in_one_line(tmp_path, capsys, changes):
    (tmp_path / "o").mkdir(exist_ok=True)
    line = _run(tmp_path, capsys, changes, ["organism", "build", "reward-hacker", "--smoke", "--out",
                                            str(tmp_path / "o")])
    if "already exists" in line:  # accepted: then TRL/transformers and the task generator accept it too
        import random

        from alignlab.envs import generate_task
        from alignlab.train.lm import training_args

        cfg = validate(override(rh.smoke_config(0), changes))
        training_args(cfg.train, str(tmp_path / "t"))
        generate_task(random.Random(0), cfg.corpus.tasks)


@FUZZ
@given(_overrides(reward_hacking.smoke_config()))
def test_study_config_overrides_run_or_fail_in_one_line(tmp_path, capsys, changes):
    (tmp_path / "f").write_text("a file, so an accepted config stops at the output check")
    line = _run(tmp_path, capsys, changes, ["study", "reward-hacking", "--smoke", "--out", str(tmp_path / "f")])
    assert "error: --out" in line or "field" in line or "must" in line, line
