import io

import pytest
from rich.console import Console

from alignlab import AlignlabError, progress
from alignlab.models.tiny import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.train.lm import LMTrainConfig, report_to, train_lm

TEXTS = [f"in [{i} {i + 1}] out [{i + 1}]\nprogram:\nreverse\n" for i in range(40)]


def _tiny():
    tok = build_tokenizer(TEXTS, 300)
    return build_tiny_model(TinyModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64), tok), tok


def test_training_shows_one_labelled_bar_and_no_library_output(monkeypatch, capsys, one_thread):
    screen = io.StringIO()
    monkeypatch.setattr(progress, "_console", Console(file=screen, force_terminal=True, width=220))
    monkeypatch.setattr(progress, "bars_on", lambda: True)
    model, tok = _tiny()
    progress.stage("none seed 0")
    train_lm(model, tok, TEXTS, LMTrainConfig(epochs=1, batch_size=8, max_len=32))
    shown = screen.getvalue()
    assert "[study] none seed 0" in shown
    assert "study: none seed 0 — training a 0.0M-parameter Llama on 40 documents step 5/5" in shown
    assert "eta" in shown
    err = capsys.readouterr().err
    assert "it/s" not in err and "{'loss'" not in err and "train_runtime" not in err  # no tqdm, no log dicts


def test_quiet_means_no_bar(monkeypatch, one_thread):
    screen = io.StringIO()
    monkeypatch.setattr(progress, "_console", Console(file=screen, force_terminal=True, width=220))
    monkeypatch.setenv("ALIGNLAB_QUIET", "1")
    model, tok = _tiny()
    progress.stage("quiet run")
    train_lm(model, tok, TEXTS, LMTrainConfig(epochs=1, batch_size=8, max_len=32))
    assert screen.getvalue().strip() == "[study] quiet run"  # the stage line only


def test_tensorboard_is_opt_in(monkeypatch):
    monkeypatch.delenv("ALIGNLAB_TENSORBOARD", raising=False)
    assert report_to() == []
    monkeypatch.setenv("ALIGNLAB_TENSORBOARD", "/tmp/tb")
    try:
        assert report_to() == ["tensorboard"]
    except AlignlabError as err:  # without the optional extra: a clear one-line error
        assert "pip install" in str(err) and "tensorboard" in str(err)
    else:
        pytest.importorskip("tensorboard")
