"""Nothing half-written, nothing stale, long jobs resumable: atomic dirs and files, and a SIGKILLed organism
build that resumes from its Trainer checkpoint and ends where an uninterrupted build ends."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import alignlab
from alignlab import AlignlabError
from alignlab.artifacts import atomic_dir, write_json_atomic


def _names(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def test_an_error_leaves_nothing_and_removes_the_parents_it_made(tmp_path):
    with pytest.raises(ValueError), atomic_dir(tmp_path / "a" / "b" / "out") as tmp:
        (tmp / "x").write_text("half")
        raise ValueError("boom")
    assert _names(tmp_path) == set()


def test_stale_temp_dirs_are_removed_and_a_resumable_one_is_handed_back(tmp_path):
    (tmp_path / ".out.k1ll3d.partial").mkdir()  # left by a killed run of an older version
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "out", resume="key") as tmp:
        (tmp / "work").write_text("kept")
        raise KeyboardInterrupt  # an interrupt, like a kill, leaves the resumable dir
    assert _names(tmp_path) == {".out.partial"}
    with atomic_dir(tmp_path / "out", resume="other work") as tmp:
        assert not (tmp / "work").exists()  # started for different work: not reused
        (tmp / "work").write_text("v2")
        raise_nothing = True
    assert raise_nothing and _names(tmp_path) == {"out"} and _names(tmp_path / "out") == {"work"}


def test_same_work_resumes_in_the_same_dir(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "out", resume="key") as tmp:
        (tmp / "step1").write_text("done")
        raise KeyboardInterrupt
    with atomic_dir(tmp_path / "out", resume="key") as tmp:
        assert (tmp / "step1").read_text() == "done"
    assert _names(tmp_path / "out") == {"step1"}


def test_temp_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "m").write_text("x")
            os.chmod(tmp / "m", 0o600)  # as a library saving through mkstemp leaves it
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "m").stat().st_mode & 0o777 == 0o644


def test_disk_full_cleans_up_and_says_so(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(AlignlabError, match="no space left"), atomic_dir(tmp_path / "out") as tmp:
        write_json_atomic(tmp / "r.json", {"a": 1})
    assert _names(tmp_path) == set()


def test_results_record_paths_relative_to_the_study(tmp_path):
    from alignlab.runs.rl import relative as _relative

    assert _relative(tmp_path / "study" / "organism", tmp_path / "study") == "organism"
    assert _relative(Path("/elsewhere/org"), tmp_path / "study") == "/elsewhere/org"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignlab.cli", *args]


@pytest.mark.slow
def test_killed_organism_build_resumes_from_its_checkpoint(tmp_path, one_thread, capsys, monkeypatch):
    """SIGKILL a smoke build once a checkpoint is on disk; the re-run resumes there (not from step 0), leaves no
    temp dir, and ends with the weights and evaluation of an uninterrupted build (one thread in both)."""
    from alignlab.cli import main
    from alignlab.progress import TrainerProgress

    trained, real = [], TrainerProgress.on_step_end

    def counting(self, args, state, control, **kwargs):  # the optimizer steps this process trains
        trained.append(state.global_step)
        return real(self, args, state, control, **kwargs)

    monkeypatch.setattr(TrainerProgress, "on_step_end", counting)
    straight_dir = tmp_path / "straight" / "rh"
    assert main(["organism", "build", "reward-hacker", "--smoke", "--seed", "3", "--out", str(straight_dir)]) == 0
    n_steps = len(trained)
    tmp_path = tmp_path / "killed"
    tmp_path.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(alignlab.__file__).parents[1]), "OMP_NUM_THREADS": "1",
           "ALIGNLAB_QUIET": "1"}
    out, partial = tmp_path / "rh", tmp_path / ".rh.partial"
    build = _cli("organism", "build", "reward-hacker", "--smoke", "--seed", "3", "--out", str(out))
    proc = subprocess.Popen(build, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(partial.glob("checkpoints/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, "the build ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.is_dir()

    trained.clear()
    capsys.readouterr()
    assert main(build[3:]) == 0  # the re-run, in this process (one thread, as the killed one)
    step = int(capsys.readouterr().err.split("checkpoint at step ")[1].split()[0])
    assert step > 0 and trained == list(range(step + 1, n_steps + 1))  # trained on from there, not from step 0
    assert _names(tmp_path) == {"rh"}  # the temp dir became the organism; nothing stale beside it
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "eval.json").read_text()) == json.loads((straight_dir / "eval.json").read_text())

    import torch
    from safetensors.torch import load_file

    resumed, straight = load_file(out / "model.safetensors"), load_file(straight_dir / "model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)  # bit for bit


def test_interrupted_sae_training_resumes_to_the_same_weights(tmp_path, monkeypatch, one_thread):
    import torch

    from alignlab.audit import sae as saes

    acts = torch.randn(1500, 16, generator=torch.Generator().manual_seed(0))
    cfg = saes.SAEConfig(k=4, expansion_factor=2, steps=60, batch_size=64, log_every=10)
    straight, straight_history = saes.train_sae(acts, cfg)

    real, steps = saes._normalise_decoder, []

    def counting(sae):  # once per optimizer step; the first run is cut off after step 37 (state saved at 36)
        real(sae)
        steps.append(1)
        if len(steps) == 37:
            raise KeyboardInterrupt

    monkeypatch.setattr(saes, "_normalise_decoder", counting)
    state = saes.state_file(tmp_path / "sae")
    with pytest.raises(KeyboardInterrupt):
        saes.train_sae(acts, cfg, checkpoint=state)
    steps.clear()
    resumed, history = saes.train_sae(acts, cfg, checkpoint=state)
    assert len(steps) == 60 - 36  # resumed at step 36, not from the start
    assert history == straight_history
    assert all(torch.equal(getattr(resumed, n), getattr(straight, n)) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))

    other = saes.SAEConfig(k=2, expansion_factor=2, steps=12, batch_size=64)  # other work: the state is ignored
    steps.clear()
    saes.train_sae(acts, other, checkpoint=state)
    assert len(steps) == 12
    saes.save_sae(resumed, tmp_path / "sae", {"model_name": "m", "hook_name": saes.resid_hook_name(0)})
    assert _names(tmp_path) == {"sae"}  # saving removed the training state beside it


def test_a_damaged_record_or_stage_is_refused_naming_it_and_the_way_out(tmp_path):
    """Atomic writes leave no half record, so one that does not parse is a damaged disk or a hand edit: refused in
    one line, not silently recomputed (a record can be minutes of GRPO)."""
    from dataclasses import dataclass

    from alignlab.runs.records import RecordStore

    @dataclass
    class Config:
        steps: int = 3

    store = RecordStore(tmp_path, "study", Config())
    store.save({"arm": "a", "seed": 0}, [], {})
    (tmp_path / "records" / "a-seed0.json").write_text('{"record": {"arm": "a", "se')  # cut short
    with pytest.raises(AlignlabError, match=r"study record .*a-seed0.json is not valid JSON: .* \(a damaged cache: "
                                            r"delete it and re-run to recompute it\)$"):
        store.load_all(["a"], [0])
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "probe.json").write_text("[1, 2]")
    with pytest.raises(AlignlabError, match=r"must hold a JSON object \(a damaged cache"):
        store.stage("probe", lambda: pytest.fail("recomputed"))
