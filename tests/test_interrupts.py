"""Ctrl-C and SIGTERM: one `error:` line, exit 130 / 143, the partial state kept, and a re-run that resumes to the
result of an uninterrupted run. SIGTERM inside a checkpointing Trainer saves a checkpoint at that step first."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

import alignlab
from alignlab import interrupts
from alignlab.cli import main

LINES = {signal.SIGINT: "error: interrupted; re-run the same command to resume",
         signal.SIGTERM: "error: stopped by SIGTERM; re-run the same command to resume"}


def _error_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if not line.startswith("[")]  # stage lines are "[kind] …"


def _replace_build(monkeypatch, build):
    from alignlab.organisms import ORGANISMS

    monkeypatch.setitem(ORGANISMS._items, "reward-hacker",
                        dataclasses.replace(ORGANISMS["reward-hacker"], build=build))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_is_one_line_its_exit_code_and_keeps_resumable_work(signum, tmp_path, monkeypatch, capsys):
    from alignlab.artifacts import atomic_dir

    def build(out, cfg, **kwargs):  # a resumable build that is signalled half way
        with atomic_dir(out, resume="key") as tmp:
            (tmp / "half").write_text("done")
            os.kill(os.getpid(), signum)
            time.sleep(30)  # the handler raises long before this ends
            (tmp / "rest").write_text("done")

    _replace_build(monkeypatch, build)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    started = time.time()
    code = main(["organism", "build", "reward-hacker", "--smoke", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 128 + signum and time.time() - started < 20
    assert _error_lines(err) == [LINES[signum]] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.partial"]  # kept for the re-run; no lock left
    assert (tmp_path / ".o.partial" / "half").is_file() and not (tmp_path / ".o.partial" / "rest").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # pytest's, again


def test_main_returns_the_commands_exit_code_and_reports_a_bare_keyboard_interrupt(tmp_path, monkeypatch, capsys):
    def exit_3(*args, **kwargs):
        raise typer.Exit(3)

    argv = ["organism", "build", "reward-hacker", "--smoke", "--out", str(tmp_path / "o")]
    _replace_build(monkeypatch, exit_3)
    assert main(argv) == 3  # once dropped: main returned 0

    def ctrl_c(*args, **kwargs):  # a KeyboardInterrupt our handler did not raise: typer returns 130 for it
        raise KeyboardInterrupt

    _replace_build(monkeypatch, ctrl_c)
    capsys.readouterr()
    assert main(argv) == 130
    assert _error_lines(capsys.readouterr().err) == [LINES[signal.SIGINT]]


@pytest.fixture(scope="module")
def tiny_lm(one_thread):
    from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer
    from alignlab.train.lm import LMTrainConfig

    texts = [f"x = {i} + {i % 7}\ny = x * {i % 5}\n" for i in range(160)]
    tok = build_tokenizer(texts, 300)
    cfg = LMTrainConfig(epochs=1, batch_size=8, seed=0, max_len=32)  # 20 steps; periodic checkpoints every 2

    def fresh():
        import torch

        torch.manual_seed(0)
        return build_tiny_model(TinyModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64), tok)

    return fresh, tok, texts, cfg


def _signal_at(step: int, signals=()):
    """A Trainer callback that sends `signals` to this process at the end of optimizer step `step`, and records
    (in `.seen`) every step it sees end."""
    from transformers import TrainerCallback

    class SignalAt(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_step_end(self, args, state, control, **kwargs):
            self.seen.append(state.global_step)
            if state.global_step == step:
                for s in signals:
                    os.kill(os.getpid(), s)

    return SignalAt()


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("signals, saved_at", [
    ((signal.SIGTERM,), 7),  # held: a checkpoint at step 7 (not a periodic one), then stop
    ((signal.SIGTERM, signal.SIGTERM), 6),  # a second SIGTERM does not wait: the periodic checkpoint at 6 stands
    ((signal.SIGINT,), 6),  # Ctrl-C does not wait either
])
def test_sigterm_saves_a_checkpoint_at_its_step_and_the_resumed_run_is_the_same(tiny_lm, tmp_path, signals,
                                                                                 saved_at):
    import torch

    from alignlab.train.lm import last_checkpoint, train_lm

    fresh, tok, texts, cfg = tiny_lm
    straight = fresh()
    train_lm(straight, tok, texts, cfg)
    model, stop = fresh(), _signal_at(7, signals)
    with interrupts.handle_signals(), pytest.raises(interrupts.Interrupted) as raised:
        train_lm(model, tok, texts, cfg, callbacks=[stop], checkpoint_dir=tmp_path)
    assert raised.value.signum == signals[-1] and stop.seen[-1] == 7
    assert last_checkpoint(tmp_path)[1] == saved_at

    again, count = fresh(), _signal_at(-1)
    train_lm(again, tok, texts, cfg, callbacks=[count], checkpoint_dir=tmp_path)
    assert count.seen == list(range(saved_at + 1, 21))  # resumed there: not retrained from step 0
    want = _weights(straight)
    assert all(torch.equal(v, want[k]) for k, v in _weights(again).items())


def test_a_damaged_checkpoint_is_removed_and_training_starts_over(tiny_lm, tmp_path, capsys):
    from alignlab.train.lm import last_checkpoint, train_lm

    fresh, tok, texts, cfg = tiny_lm
    with interrupts.handle_signals(), pytest.raises(interrupts.Interrupted):
        train_lm(fresh(), tok, texts, cfg, callbacks=[_signal_at(3, (signal.SIGTERM,))], checkpoint_dir=tmp_path)
    weights = tmp_path / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # cut short behind the Trainer's back
    capsys.readouterr()
    assert last_checkpoint(tmp_path) == (None, 0)
    err = capsys.readouterr().err
    assert "checkpoint-3 is damaged (model.safetensors: SafetensorError" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "checkpoint-3").exists()


# End to end: the real CLI in a subprocess, signalled at several moments, then re-run.

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(alignlab.__file__).parents[1]), "OMP_NUM_THREADS": "1",
            "ALIGNLAB_QUIET": "1"}


def _signal_when(argv: list[str], ready, signum: int) -> tuple[int, str]:
    """Run the CLI in a subprocess, send `signum` once `ready()` holds; its exit code and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "alignlab.cli", *argv], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None, f"the run ended before the moment to signal it: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signum)
    return proc.wait(timeout=120), proc.stderr.read()


def _steps(partial: Path) -> list[int]:
    return [int(p.parent.name.split("-")[1]) for p in partial.glob("checkpoints/checkpoint-*/trainer_state.json")]


@pytest.mark.slow
def test_a_signalled_smoke_build_resumes_to_the_uninterrupted_organism(smoke_organism, tmp_path, capsys):
    """SIGINT at the first checkpoint, SIGTERM between checkpoints (it saves one there), SIGTERM while the model is
    evaluated: each exits 130/143 with one line; the re-run ends bit for bit where an uninterrupted build ends."""
    out, partial = tmp_path / "rh", tmp_path / ".rh.partial"
    argv = ["organism", "build", "reward-hacker", "--smoke", "--seed", "3", "--out", str(out)]
    moments = [(signal.SIGINT, lambda: _steps(partial)),
               (signal.SIGTERM, lambda: _steps(partial) and max(_steps(partial)) >= 15),
               (signal.SIGTERM, lambda: _steps(partial) and max(_steps(partial)) >= 45)]  # 47 steps: evaluating
    for signum, ready in moments:
        code, err = _signal_when(argv, ready, signum)
        assert code == 128 + signum and _error_lines(err) == [LINES[signum]], err
        assert not out.exists() and partial.is_dir()
    capsys.readouterr()
    assert main(argv) == 0
    resumed = int(capsys.readouterr().err.split("checkpoint at step ")[1].split()[0])
    assert 45 <= resumed <= 47  # the third signal came after the step-45 checkpoint (training or evaluating)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rh"]
    assert (out / "eval.json").read_text() == (smoke_organism / "eval.json").read_text()
    assert (out / "model.safetensors").read_bytes() == (smoke_organism / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_a_signalled_smoke_study_resumes_to_the_uninterrupted_results(tmp_path, capsys, one_thread, hacky_organism):
    """SIGINT once its probe is written, SIGTERM during the first arm, SIGTERM after it: each exits 130/143 with one
    line, and the re-run writes the results.json of an uninterrupted study. (Signals during an organism build:
    the test above; the study is given a built organism and two arms to keep the suite inside its budget.)"""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    common = ["--smoke", "--arms", "none,oracle", "--organism", str(hacky_organism)]
    assert main(["study", "reward-hacking", *common, "--out", str(straight)]) == 0
    argv = ["study", "reward-hacking", *common, "--out", str(killed)]
    moments = [(signal.SIGINT, lambda: (killed / "probe" / "probe.json").exists()),
               (signal.SIGTERM, lambda: (killed / "records" / "start-seed0.json").exists()),
               (signal.SIGTERM, lambda: (killed / "records" / "none-seed0.json").exists())]
    for signum, ready in moments:
        code, err = _signal_when(argv, ready, signum)
        assert code == 128 + signum and _error_lines(err) == [LINES[signum]], err
    assert main(argv) == 0
    assert json.loads((killed / "results.json").read_text()) == json.loads((straight / "results.json").read_text())
