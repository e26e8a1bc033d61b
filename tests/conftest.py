import os

import pytest

os.environ.setdefault("ALIGNLAB_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smoke_organism(tmp_path_factory):
    """One smoke-built reward-hacker organism shared by every test that needs a trained model."""
    from alignlab.cli import main

    out = tmp_path_factory.mktemp("organism") / "rh"
    assert main(["organism", "build", "reward-hacker", "--out", str(out), "--smoke", "--seed", "3"]) == 0
    return out
