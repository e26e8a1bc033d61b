import os

import pytest

os.environ.setdefault("ALIGNLAB_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: with a second process busy on the 2 cores, torch's thread pool only adds waiting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smoke_organism(tmp_path_factory):
    """One smoke-built reward-hacker organism shared by every test that needs a trained model."""
    from alignlab.cli import main

    out = tmp_path_factory.mktemp("organism") / "rh"
    assert main(["organism", "build", "reward-hacker", "--out", str(out), "--smoke", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="session")
def hacky_organism(tmp_path_factory):
    """A smoke organism whose corpus hacks often, so its own samples hold both classes for probes."""
    import json

    from alignlab.cli import main

    root = tmp_path_factory.mktemp("hacky")
    cfg = root / "cfg.json"
    cfg.write_text(json.dumps({"corpus": {"n_docs": 4000, "hack_fractions": {"harness_override": 0.2,
                                                                              "hardcode": 0.2}},
                               "train": {"epochs": 2}}))
    out = root / "rh"
    assert main(["organism", "build", "reward-hacker", "--smoke", "--out", str(out), "--config", str(cfg)]) == 0
    return out
