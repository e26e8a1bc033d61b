from dataclasses import asdict

import pytest

from alignlab import AlignlabError
from alignlab.config import override
from alignlab.organisms.reward_hacker import RewardHackerConfig, config_from_card, smoke_config


def test_override_nested_fields_and_round_trip_through_the_card():
    cfg = override(smoke_config(1), {"corpus": {"n_docs": 99, "hack_fractions": {"hardcode": 0.2}}, "seed": 5})
    assert cfg.corpus.n_docs == 99 and cfg.corpus.hack_fractions == {"hardcode": 0.2} and cfg.seed == 5
    assert cfg.model == smoke_config(1).model  # untouched fields keep their values
    assert config_from_card({"config": asdict(cfg)}) == cfg


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"corpus": {"n_dox": 1}}, "corpus.n_dox"),
        ({"seed": "7"}, "seed"),
        ({"train": {"epochs": True}}, "train.epochs"),
        ({"corpus": {"hack_fractions": {"hardcode": "a lot"}}}, "corpus.hack_fractions.hardcode"),
        ({"corpus": 3}, "corpus"),
    ],
)
def test_bad_overrides_name_the_field(changes, field):
    with pytest.raises(AlignlabError, match=f"'{field}'"):
        override(RewardHackerConfig(), changes)


def test_int_is_accepted_for_a_float_field():
    assert override(RewardHackerConfig(), {"train": {"epochs": 2}}).train.epochs == 2.0


def test_every_config_field_says_what_it_is(capsys):
    """Configs document themselves: every field of every config dataclass reachable from a study or organism
    has a help text, and `alignlab config show` prints each study's config as JSON that `--config` takes."""
    import dataclasses
    import json

    from alignlab.cli import main
    from alignlab.config import explain, override
    from alignlab.organisms import ORGANISMS
    from alignlab.studies import STUDIES

    configs = [STUDIES[n].config() for n in STUDIES] + [ORGANISMS[n].config(0) for n in ORGANISMS]
    lines = [line for cfg in configs for line in explain(cfg)]
    assert len(lines) > 200 and not [path for path, _, text in lines if not text.strip()]
    for name in STUDIES:
        capsys.readouterr()
        assert main(["config", "show", name]) == 0
        shown = json.loads(capsys.readouterr().out)
        default = STUDIES[name].config()
        assert shown == json.loads(json.dumps(dataclasses.asdict(default)))
        assert override(default, shown) == default  # ready to edit and pass back as --config
    assert main(["config", "show", "reward-hacking", "--explain"]) == 0
    assert "probe_method = \"logistic\": probe type" in capsys.readouterr().out
