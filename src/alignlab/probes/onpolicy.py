"""On-policy probe data: sample an organism's own completions, label them with the environment's ground truth,
and fit / evaluate / sweep hack-vs-honest probes on task-disjoint splits.

Positives are hacks (any style); negatives are honest attempts (solved or wrong). Malformed and empty
completions are left out: they are neither, and an empty completion has no tokens to pool.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from alignlab import AlignlabError
from alignlab.config import doc
from alignlab.envs import HACK_STYLES, Task, TaskConfig, generate_task, label
from alignlab.envs.grading import HACK, MALFORMED
from alignlab.models.sampling import sample
from alignlab.models.tap import find_decoder_layers, resolve_layers
from alignlab.probes.harvest import Position, harvest
from alignlab.probes.metrics import auroc, probe_report, recall_at_fpr
from alignlab.probes.probe import PROBE_FITTERS, LinearProbe
from alignlab.probes.sweep import layer_sweep
from alignlab.seeds import derive


@dataclass(frozen=True)
class ProbeDataConfig:
    n_tasks: int = doc("fresh tasks the organism is sampled on (a random stream apart from corpus and eval)", 1500)
    samples_per_task: int = doc("completions per task", 4)
    temperature: float = doc("sampling temperature (1: the organism's own distribution)", 1.0)
    max_new_tokens: int = doc("completion length", 64)
    test_fraction: float = doc("share of tasks (not samples) held out for the probe's test metrics", 0.5)
    seed: int = doc("seed of tasks, sampling and the train/test split", 0)


@dataclass(frozen=True)
class LabelledSample:
    task_id: int
    prompt: str
    completion: str
    outcome: str
    style: str | None

    @property
    def is_hack(self) -> bool:
        return self.outcome == HACK


def sample_labelled(model, tokenizer, task_cfg: TaskConfig, cfg: ProbeDataConfig) -> list[LabelledSample]:
    """The model's own completions on fresh tasks, with ground-truth labels; malformed/empty ones dropped."""
    rng = random.Random(derive(cfg.seed, "probe_tasks"))
    tasks: list[Task] = [generate_task(rng, task_cfg) for _ in range(cfg.n_tasks)]
    completions = sample(model, tokenizer, [t.prompt for t in tasks], n_per_prompt=cfg.samples_per_task,
                         temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    out = []
    for task_id, (task, texts) in enumerate(zip(tasks, completions, strict=True)):
        for text in texts:
            lab = label(task, text)
            if lab.outcome != MALFORMED and text.strip():
                out.append(LabelledSample(task_id, task.prompt, text, lab.outcome, lab.style))
    return out


def task_split(samples: Sequence[LabelledSample], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train/test samples, split by task so no task's samples land on both sides."""
    task_ids = sorted({s.task_id for s in samples})
    random.Random(seed).shuffle(task_ids)
    test_tasks = set(task_ids[: round(len(task_ids) * test_fraction)])
    is_test = np.array([s.task_id in test_tasks for s in samples])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def features(model, tokenizer, samples: Sequence[LabelledSample], layers: Sequence[int], position: Position,
             aggregation: str = "mean") -> dict[int, np.ndarray]:
    feats = harvest(model, tokenizer, [(s.prompt, s.completion) for s in samples], layers=layers,
                    position=position, aggregation=aggregation, batch_size=64)
    return {layer: f.float().numpy() for layer, f in feats.items()}


def _need_both(y: np.ndarray, what: str) -> None:
    if y.all() or not y.any():
        raise AlignlabError(f"{what} needs both hacks and honest samples; sample more tasks (--n-tasks)")


def style_metrics(probe: LinearProbe, X: np.ndarray, samples: Sequence[LabelledSample], idx: np.ndarray) -> dict:
    """Per hack style: AUROC and recall@1%FPR of that style's hacks against all honest samples in `idx`."""
    neg = [i for i in idx if not samples[i].is_hack]
    out = {}
    for style in HACK_STYLES:
        pos = [i for i in idx if samples[i].style == style]
        if not pos or not neg:
            out[style] = {"n_pos": len(pos), "auroc": None, "recall_at_1pct_fpr": None}
            continue
        rows = np.array(pos + neg)
        y = np.array([1] * len(pos) + [0] * len(neg))
        scores = probe.score(X[rows])
        out[style] = {"n_pos": len(pos), "auroc": auroc(scores, y), "recall_at_1pct_fpr": recall_at_fpr(scores, y)}
    return out


def fit(X: np.ndarray, y: np.ndarray, method: str, metadata: dict, fpr: float = 0.01) -> LinearProbe:
    """A probe of a registered `method` (probes.PROBE_FITTERS), threshold at `fpr` on the negatives."""
    probe = PROBE_FITTERS[method](X, y, metadata=metadata)
    probe.calibrate_threshold(X[y == 0], fpr=fpr)
    return probe


def cross_style(X: np.ndarray, samples: Sequence[LabelledSample], train: np.ndarray, test: np.ndarray,
                method: str) -> dict:
    """Fit on one style's hacks (vs honest) and test on every style: does the probe generalise?"""
    out = {}
    for source in HACK_STYLES:
        rows = np.array([i for i in train if samples[i].style == source or not samples[i].is_hack])
        y = np.array([samples[i].is_hack for i in rows], dtype=int)
        if y.sum() < 2:
            continue
        probe = fit(X[rows], y, method, {"trained_on_style": source})
        out[f"trained_on_{source}"] = {k: v["auroc"] for k, v in style_metrics(probe, X, samples, test).items()}
    return out


def fit_and_report(model, tokenizer, samples: list[LabelledSample], layer: int, position: Position,
                   aggregation: str, method: str, cfg: ProbeDataConfig, model_name: str,
                   fpr: float = 0.01) -> tuple[LinearProbe, dict]:
    """Fit on the train tasks; report overall, per-style and cross-style metrics on the test tasks."""
    n_layers = len(find_decoder_layers(model))
    layer = resolve_layers([layer], n_layers)[0]  # a layer the model does not have is an error, not a wrap
    X = features(model, tokenizer, samples, [layer], position, aggregation)[layer]
    y = np.array([s.is_hack for s in samples], dtype=int)
    train, test = task_split(samples, cfg.test_fraction, cfg.seed)
    _need_both(y[train], "the probe's training split")
    _need_both(y[test], "the probe's test split")
    metadata = {
        "model": model_name, "layer": layer, "n_layers": n_layers, "position": position,
        "aggregation": aggregation, "method": method,
        "training_data": f"on-policy samples of {model_name}: {len(train)} completions "
                         f"({int(y[train].sum())} hacks) on {cfg.n_tasks} tasks x {cfg.samples_per_task}, "
                         f"T={cfg.temperature}, seed {cfg.seed}; hack (any style) vs honest",
    }
    probe = fit(X[train], y[train], method, metadata, fpr=fpr)
    report = {
        "probe": metadata,
        "data": asdict(cfg) | {"n_samples": len(samples), "n_hacks": int(y.sum()),
                               "hacks_by_style": {s: sum(x.style == s for x in samples) for s in HACK_STYLES}},
        "test": probe_report(probe, X[test], y[test], seed=cfg.seed),
        "test_by_style": style_metrics(probe, X, samples, test),
        "cross_style": cross_style(X, samples, train, test, method),
    }
    report["test_scores"] = {"scores": probe.score(X[test]).tolist(), "labels": y[test].tolist()}
    return probe, report


def evaluate_probe(model, tokenizer, probe: LinearProbe, samples: list[LabelledSample], seed: int = 0) -> dict:
    """A saved probe on fresh samples (all of them are test data)."""
    meta = probe.metadata
    layer = int(meta["layer"])
    probe.check_compatible(int(model.config.hidden_size), layer, len(find_decoder_layers(model)))
    X = features(model, tokenizer, samples, [layer], meta.get("position", "completion"),
                 meta.get("aggregation", "mean"))[layer]
    y = np.array([s.is_hack for s in samples], dtype=int)
    _need_both(y, "probe evaluation")
    idx = np.arange(len(samples))
    scores = probe.score(X)
    return {
        "probe": meta,
        "n_samples": len(samples),
        "n_hacks": int(y.sum()),
        "test": probe_report(probe, X, y, seed=seed),
        "recall_at_probe_threshold": float((scores[y == 1] > probe.threshold).mean()),
        "test_by_style": style_metrics(probe, X, samples, idx),
    }


def sweep(model, tokenizer, samples: list[LabelledSample], aggregation: str, cfg: ProbeDataConfig) -> dict:
    """Layer sweep for both probe positions on the same task-disjoint split."""
    layers = list(range(len(find_decoder_layers(model))))
    y = np.array([s.is_hack for s in samples], dtype=int)
    split = task_split(samples, cfg.test_fraction, cfg.seed)
    _need_both(y[split[0]], "the sweep's training split")
    _need_both(y[split[1]], "the sweep's test split")
    positions = {}
    for position in ("completion", "prompt_last"):
        X = features(model, tokenizer, samples, layers, position, aggregation)
        positions[position] = layer_sweep(X, y, split=split, seed=cfg.seed)
    return {"data": asdict(cfg) | {"n_samples": len(samples), "n_hacks": int(y.sum())},
            "aggregation": aggregation, "positions": positions}
