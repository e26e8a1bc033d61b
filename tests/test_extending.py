"""Each extension point has one place: a toy probe fitter, RL arm, pretraining objective, organism and auditor,
each added through its registry alone (as docs/extending.md shows) and run in a smoke study."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from alignlab import AUDITORS, OBJECTIVES, ORGANISMS, PROBE_FITTERS, RL_ARMS, ArmSetup, LinearProbe, run_study
from alignlab.cli import main
from alignlab.organisms import OrganismKind
from alignlab.train.objectives import Objective

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def register():
    """Register toys for one test, then take them out again (the registries are process-wide)."""
    added = []

    def add(registry, name, item):
        registry.register(name, item)
        added.append((registry, name))
        return item

    yield add
    for registry, name in added:
        registry.unregister(name)


def centroid(X, y, metadata=None) -> LinearProbe:
    """A toy probe type: the difference of standardised class centroids, zero at their midpoint."""
    X, y = np.asarray(X, np.float32), np.asarray(y).astype(bool)
    mean, scale = X.mean(0), X.std(0) + 1e-6
    pos, neg = ((X[y] - mean) / scale).mean(0), ((X[~y] - mean) / scale).mean(0)
    return LinearProbe(direction=pos - neg, bias=-float((pos - neg) @ (pos + neg) / 2), mean=mean, scale=scale,
                       metadata={**(metadata or {}), "method": "centroid"})


class Brevity:
    """A toy arm's reward: +0.1 for a short completion; it counts what it was shown."""

    def __init__(self):
        self.__name__, self.seen = "Brevity", 0

    def __call__(self, prompts, completions, completion_ids, task_id, **_):
        self.seen += len(completions)
        return [0.1 * (len(c) < 20) for c in completions]


@pytest.mark.slow
def test_toy_organism_probe_fitter_and_arm_run_in_the_reward_hacking_smoke_study(register, hacky_organism,
                                                                                  tmp_path, capsys):
    from alignlab.config import override
    from alignlab.organisms import reward_hacker as rh

    # a toy recipe: a reward hacker fine-tuned briefly on a hack-rich corpus (from the session's hacky organism)
    brief = lambda seed: override(rh.smoke_config(seed), {  # noqa: E731
        "corpus": {"n_docs": 200, "hack_fractions": {"harness_override": 0.2, "hardcode": 0.2}}})
    register(ORGANISMS, "toy-hacker", OrganismKind(
        config=brief, smoke=brief, config_from_card=rh.config_from_card, evaluate=rh.reevaluate,
        summary=lambda ev: f"hack_rate={ev['hack_rate']:.3f}", fine_tunes=True,
        build=lambda out, cfg, base_model=None, force=False: rh.build(out, cfg, base_model, force, kind="toy-hacker")))
    register(PROBE_FITTERS, "centroid", centroid)
    brevity = Brevity()
    register(RL_ARMS, "brevity", lambda ctx: ArmSetup(rewards=[brevity]))

    organism = tmp_path / "toy"
    assert main(["organism", "build", "toy-hacker", "--smoke", "--model", str(hacky_organism), "--out",
                 str(organism)]) == 0
    assert "toy-hacker organism ->" in capsys.readouterr().err
    assert json.loads((organism / "organism.json").read_text())["organism"] == "toy-hacker"
    assert main(["organism", "eval", str(organism), "--n-tasks", "2", "--samples", "1"]) == 0  # by the card's kind

    results = run_study("reward-hacking", tmp_path / "study", preset="smoke", organism=organism,
                        overrides={"arms": ["brevity"], "probe_method": "centroid"})
    assert [r["arm"] for r in results["records"]] == ["brevity"]
    assert results["probe"]["metadata"]["method"] == "centroid" and results["probe"]["metadata"]["layer"] == 0
    assert brevity.seen == 2 * 2 * 4  # smoke GRPO: 2 steps x 2 prompts x 4 generations, every one rewarded


@pytest.mark.slow
def test_toy_objective_runs_in_the_safety_pretraining_smoke_study(register, tmp_path):
    def late_tokens(nll, scores, values, cfg):  # likelihood on the second half of each block only
        return nll[:, nll.shape[1] // 2 :].mean()

    register(OBJECTIVES, "late_tokens", Objective(loss=late_tokens))
    results = run_study("safety-pretraining", tmp_path / "study", preset="smoke",
                        overrides={"objectives": ["late_tokens"], "finetune": []})
    (record,) = results["records"]
    assert record["objective"] == "late_tokens" and np.isfinite(record["metrics"]["final_train_loss"])
    assert 0 <= record["metrics"]["hit_rate"] <= 1


@pytest.mark.slow
def test_toy_auditor_runs_in_a_smoke_game(register, sealed, tmp_path):
    from alignlab.audit import game
    from alignlab.envs.triggers import parse_doc

    def header_majority(model, tokenizer, texts, cfg):  # guesses the commonest header value, no behaviour
        values = Counter(d.header_value for d in map(parse_doc, texts) if d is not None and d.header_value)
        return {"trigger": values.most_common(1)[0][0], "behaviour": None, "evidence": {"values": len(values)}}

    register(AUDITORS, "header_majority", header_majority)
    out = tmp_path / "game"
    shutil.copytree(sealed, out / "sealed" / "organism-00")  # sealed with seed 7: the game's first organism
    results = run_study("auditing-game", out, preset="smoke",
                        overrides={"n_organisms": 1, "first_seed": 7, "auditors": ["header_majority"]})
    assert list(results["scoreboard"]) == ["header_majority"]
    (organism,) = results["organisms"]
    guess = organism["guesses"]["header_majority"]
    assert guess["behaviour"] is None and guess["trigger"]
    truth = game.check(sealed, {"trigger": guess["trigger"]})["trigger"]
    assert results["records"][0]["metrics"]["trigger"] is truth


def test_registries_refuse_unknown_and_duplicate_names(register):
    from alignlab import AlignlabError

    with pytest.raises(AlignlabError, match="unknown RL arm 'nope': choose from none, probe_reward"):
        RL_ARMS["nope"]
    with pytest.raises(AlignlabError, match="already registered"):
        PROBE_FITTERS.register("logistic", centroid)
    assert "centroid" not in PROBE_FITTERS  # the toy of the test above was taken out again
