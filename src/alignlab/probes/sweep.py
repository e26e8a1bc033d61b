"""The layer sweep: a logistic and a diff-of-means probe per layer, AUROC on held-out data, and its plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from alignlab import AlignlabError
from alignlab.artifacts import new_figure, save_figure
from alignlab.probes.metrics import as_numpy, auroc, binary_labels, random_direction_control
from alignlab.probes.probe import fit_diff_of_means, fit_logistic


def layer_sweep(
    features_by_layer: Mapping[int, object],
    labels,
    split: float | tuple[Sequence[int], Sequence[int]] = 0.5,
    C: float = 1.0,
    seed: int = 0,
    n_random: int = 20,
) -> dict:
    """Fit a logistic and a diff-of-means probe per layer on the train part, score AUROC on the test part.

    `split` is a test fraction (stratified, seeded) or explicit (train_indices, test_indices).
    Returns JSON-ready lists aligned with "layers", plus "best_layer" (highest logistic test AUROC).
    """
    if not features_by_layer:
        raise AlignlabError("layer_sweep needs features for at least one layer")
    layers = sorted(features_by_layer)
    n = len(as_numpy(features_by_layer[layers[0]]))
    y = binary_labels(labels, n)
    if isinstance(split, float):
        train, test = train_test_split(np.arange(n), test_size=split, random_state=seed, stratify=y)
    else:
        train, test = np.asarray(split[0], dtype=int), np.asarray(split[1], dtype=int)
    for part in (train, test):
        binary_labels(y[part])  # each part needs both classes
    out: dict = {"layers": layers, "auroc": [], "auroc_train": [], "auroc_diff_of_means": [],
                 "random_auroc_mean": [], "random_auroc_std": [],
                 "n_train": len(train), "n_test": len(test), "C": C, "seed": seed}
    for layer in layers:
        X = as_numpy(features_by_layer[layer], np.float32)
        if len(X) != n:
            raise AlignlabError(f"layer {layer} has {len(X)} examples, layer {layers[0]} has {n}")
        probe = fit_logistic(X[train], y[train], C=C, metadata={"layer": layer})
        dom = fit_diff_of_means(X[train], y[train])
        control = random_direction_control(X[test], y[test], probe, n=n_random, seed=seed)
        out["auroc"].append(auroc(probe.score(X[test]), y[test]))
        out["auroc_train"].append(auroc(probe.score(X[train]), y[train]))
        out["auroc_diff_of_means"].append(auroc(dom.score(X[test]), y[test]))
        out["random_auroc_mean"].append(control["mean"])
        out["random_auroc_std"].append(control["std"])
    out["best_layer"] = layers[int(np.argmax(out["auroc"]))]
    return out



def plot_layer_sweep(result: Mapping, path: str | Path, title: str | None = None) -> None:
    """Write a PNG of test AUROC by layer (logistic, diff-of-means, random control ± 1 std)."""
    layers = list(result["layers"])
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(layers, result["auroc"], "o-", label="logistic (test)")
    ax.plot(layers, result["auroc_diff_of_means"], "s--", label="diff of means (test)")
    mean, std = np.asarray(result["random_auroc_mean"]), np.asarray(result["random_auroc_std"])
    ax.plot(layers, mean, ":", color="grey", label="random directions")
    ax.fill_between(layers, mean - std, mean + std, color="grey", alpha=0.2)
    ax.set_xlabel("layer")
    ax.set_ylabel("AUROC")
    ax.set_ylim(0.0, 1.02)
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    save_figure(fig, path)

