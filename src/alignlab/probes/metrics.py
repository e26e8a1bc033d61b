"""Probe metrics (AUROC, recall at a fixed FPR, a random-direction control) and the per-layer sweep."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from alignlab import AlignlabError
from alignlab.artifacts import new_figure, save_figure

if TYPE_CHECKING:
    from alignlab.probes.probe import LinearProbe


def as_numpy(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def binary_labels(labels, n: int | None = None) -> np.ndarray:
    """Labels as a bool array; both classes must be present (else AUROC and FPR are undefined)."""
    y = as_numpy(labels, dtype=np.float64).reshape(-1)
    if n is not None and len(y) != n:
        raise AlignlabError(f"got {len(y)} labels for {n} examples")
    if not np.isin(y, (0, 1)).all():
        raise AlignlabError("labels must be 0/1 (or bool)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise AlignlabError("labels must contain both classes (some positives and some negatives)")
    return y


def threshold_at_fpr(neg_scores, fpr: float = 0.01) -> float:
    """A threshold with at most `fpr` of `neg_scores` strictly above it (the ceil((1-fpr)·n)-th smallest)."""
    if not 0.0 <= fpr < 1.0:
        raise AlignlabError(f"fpr must be in [0, 1), got {fpr}")
    s = np.sort(as_numpy(neg_scores).reshape(-1))
    if len(s) == 0:
        raise AlignlabError("cannot calibrate a threshold on zero negatives")
    k = max(int(np.ceil((1.0 - fpr) * len(s) - 1e-9)) - 1, 0)  # the epsilon absorbs float error in (1-fpr)·n
    return float(s[k])


def auroc(scores, labels) -> float:
    s = as_numpy(scores).reshape(-1)
    return float(roc_auc_score(binary_labels(labels, len(s)), s))


def recall_at_fpr(scores, labels, fpr: float = 0.01) -> float:
    """Fraction of positives above the threshold that lets through `fpr` of the negatives."""
    s = as_numpy(scores).reshape(-1)
    y = binary_labels(labels, len(s))
    return float((s[y] > threshold_at_fpr(s[~y], fpr)).mean())


def accuracy_at_threshold(scores, labels, threshold: float = 0.0) -> float:
    s = as_numpy(scores).reshape(-1)
    y = as_numpy(labels).reshape(-1).astype(bool)
    if len(y) != len(s):
        raise AlignlabError(f"got {len(y)} labels for {len(s)} scores")
    return float(((s > threshold) == y).mean())


def random_direction_control(X, y, probe: LinearProbe, n: int = 20, seed: int = 0) -> dict[str, float]:
    """AUROC of `n` random directions with the probe's norm, in the probe's standardised space.

    A probe that only beats this by a little is reading generic variance, not the concept.
    """
    Z = (as_numpy(X) - probe.mean.astype(np.float64)) / probe.scale.astype(np.float64)
    labels = binary_labels(y, len(Z))
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n, Z.shape[1]))
    dirs *= np.linalg.norm(probe.direction) / np.linalg.norm(dirs, axis=1, keepdims=True)
    aurocs = np.array([roc_auc_score(labels, Z @ d) for d in dirs])
    return {"mean": float(aurocs.mean()), "std": float(aurocs.std()), "n": n}


def probe_report(probe: LinearProbe, X, y, fpr: float = 0.01, n_random: int = 20, seed: int = 0) -> dict:
    """AUROC, recall at `fpr` (threshold calibrated on these negatives), accuracy at the probe's threshold,
    and the random-direction control, on (X, y)."""
    scores = as_numpy(probe.score(as_numpy(X, np.float32)))
    labels = binary_labels(y, len(scores))
    control = random_direction_control(X, labels, probe, n=n_random, seed=seed)
    return {
        "n": len(labels),
        "n_pos": int(labels.sum()),
        "n_neg": int((~labels).sum()),
        "auroc": auroc(scores, labels),
        "fpr": fpr,
        "threshold_at_fpr": threshold_at_fpr(scores[~labels], fpr),
        "recall_at_fpr": recall_at_fpr(scores, labels, fpr),
        "threshold": float(probe.threshold),
        "accuracy_at_threshold": accuracy_at_threshold(scores, labels, probe.threshold),
        "random_auroc_mean": control["mean"],
        "random_auroc_std": control["std"],
    }


def plot_score_histogram(scores, labels, threshold: float, path: str | Path, title: str | None = None) -> None:
    """Write a PNG of probe scores for honest vs hack samples, with the probe's threshold."""
    scores, labels = as_numpy(scores), binary_labels(labels)
    fig = new_figure()
    ax = fig.add_subplot()
    bins = np.linspace(scores.min(), scores.max(), 40)
    ax.hist(scores[~labels], bins=bins, alpha=0.6, density=True, label=f"honest (n={int((~labels).sum())})")
    ax.hist(scores[labels], bins=bins, alpha=0.6, density=True, label=f"hack (n={int(labels.sum())})")
    ax.axvline(threshold, color="k", ls="--", label="threshold (1% FPR)")
    ax.set_xlabel("probe logit")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    save_figure(fig, path)
