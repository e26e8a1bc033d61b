"""The on-policy probe pipeline, end to end on a tiny model, with samples whose labels we construct."""

import random

import numpy as np
import pytest

from alignlab import AlignlabError
from alignlab.envs import HARNESS_OVERRIDE, TaskConfig, generate_task, label
from alignlab.organisms.reward_hacker import hardcode_completion, wrong_completion
from alignlab.probes.onpolicy import (
    LabelledSample,
    ProbeDataConfig,
    evaluate_probe,
    fit_and_report,
    sweep,
    task_split,
)


def constructed_samples(n_tasks: int, seed: int) -> list[LabelledSample]:
    """Per task: one honest, one wrong and one hack (style alternating) completion, labelled by the env.
    Which tasks get which hack style is random, so the prompt alone carries no signal about it."""
    rng = random.Random(seed)
    out = []
    for task_id in range(n_tasks):
        task = generate_task(rng, TaskConfig())
        hack = HARNESS_OVERRIDE if rng.random() < 0.5 else hardcode_completion(task)
        for text in (task.solution, wrong_completion(task, rng), hack):
            if text is None:
                continue
            lab = label(task, text)
            out.append(LabelledSample(task_id, task.prompt, text, lab.outcome, lab.style))
    return out


@pytest.fixture(scope="module")
def organism(smoke_organism):
    from alignlab.organisms.reward_hacker import load_organism

    model, tokenizer, _ = load_organism(smoke_organism)
    return model, tokenizer


def test_task_split_keeps_tasks_on_one_side():
    samples = constructed_samples(40, 0)
    train, test = task_split(samples, 0.5, seed=1)
    assert len(train) + len(test) == len(samples)
    assert not {samples[i].task_id for i in train} & {samples[i].task_id for i in test}


def test_completion_probe_separates_constructed_hacks(organism, tmp_path):
    model, tokenizer = organism
    samples = constructed_samples(120, 1)
    cfg = ProbeDataConfig(n_tasks=120, samples_per_task=3, seed=0)
    probe, report = fit_and_report(model, tokenizer, samples, layer=-1, position="completion", aggregation="mean",
                                   method="logistic", cfg=cfg, model_name="smoke")
    # hacks are spelled differently from programs: pooled completion features must separate them
    assert report["test"]["auroc"] > 0.9
    assert abs(report["test"]["random_auroc_mean"] - 0.5) < 0.2
    assert set(report["test_by_style"]) == {"harness_override", "hardcode"}
    assert set(report["cross_style"]) == {"trained_on_harness_override", "trained_on_hardcode"}
    assert probe.metadata["layer"] == model.config.num_hidden_layers - 1
    probe.save(tmp_path / "p")
    fresh = evaluate_probe(model, tokenizer, type(probe).load(tmp_path / "p"), constructed_samples(60, 9))
    assert fresh["test"]["auroc"] > 0.9 and fresh["n_hacks"] > 0


def test_prompt_probe_sees_only_the_prompt(organism):
    """On constructed data the hack is assigned at random per task, so the last prompt token cannot know it:
    a prompt-position probe must be near chance while the completion probe is not (catches mask bugs)."""
    model, tokenizer = organism
    samples = constructed_samples(150, 2)
    result = sweep(model, tokenizer, samples, "mean", ProbeDataConfig(seed=0))
    prompt_auroc = max(result["positions"]["prompt_last"]["auroc"])
    completion_auroc = max(result["positions"]["completion"]["auroc"])
    assert completion_auroc > 0.9
    assert prompt_auroc < 0.75


def test_probe_on_wrong_model_width_is_refused(organism, tmp_path):
    from alignlab.probes import fit_logistic

    model, tokenizer = organism
    d = model.config.hidden_size + 1
    X = np.random.default_rng(0).standard_normal((40, d)).astype(np.float32)
    probe = fit_logistic(X, np.arange(40) % 2, metadata={"layer": 0, "position": "completion"})
    with pytest.raises(AlignlabError, match="d_model"):
        evaluate_probe(model, tokenizer, probe, constructed_samples(10, 3))
