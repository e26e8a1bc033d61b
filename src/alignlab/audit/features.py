"""Feature search with an SAE: per-text feature activations, features ranked by a label, top examples.

The auditing question is "which SAE features fire on the texts where the organism misbehaves?":
`feature_activations` pools each feature over a text's tokens, `rank_features` scores every feature
by AUROC against a boolean label, and `top_activating_examples` shows the tokens a feature fires on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.stats import rankdata

from alignlab import AlignlabError
from alignlab.audit.sae import SparseAutoencoder, token_activations
from alignlab.probes.metrics import as_numpy, binary_labels

Pooling = Literal["max", "mean"]


def _encode_chunks(sae: SparseAutoencoder, acts: torch.Tensor, chunk: int = 4096):
    """Yield (start, feature activations) over `acts` in chunks, so N × d_sae is never held at once."""
    device = sae.W_enc.device
    with torch.no_grad():
        for start in range(0, len(acts), chunk):
            yield start, sae.encode(acts[start : start + chunk].to(device)).float().cpu()


def pool_features(sae: SparseAutoencoder, acts: torch.Tensor, index: torch.Tensor, n_texts: int,
                  how: Pooling = "max") -> torch.Tensor:
    """[n_texts, d_sae]: each feature pooled over the tokens of each text (rows of `acts` tagged by
    `index[:, 0]`, as `token_activations` returns them). A text with no tokens gets zeros."""
    if how not in ("max", "mean"):
        raise AlignlabError(f"unknown pooling {how!r} (expected max or mean)")
    if acts.shape[1] != sae.d_in:
        raise AlignlabError(f"activations have d={acts.shape[1]} but the SAE reads d_in={sae.d_in}")
    out = torch.zeros(n_texts, sae.d_sae)
    counts = torch.bincount(index[:, 0], minlength=n_texts).clamp_min(1)
    for start, f in _encode_chunks(sae, acts):
        rows = index[start : start + len(f), 0][:, None].expand_as(f)
        # activations are >= 0 (ReLU / TopK), so a zero start is a valid identity for max
        out.scatter_reduce_(0, rows, f, reduce="amax" if how == "max" else "sum")
    return out if how == "max" else out / counts[:, None]


def feature_activations(sae: SparseAutoencoder, model, tokenizer, texts: Sequence[str], layer: int,
                        how: Pooling = "max", batch_size: int = 32) -> torch.Tensor:
    """[n_texts, d_sae] float32: each SAE feature's max (or mean) activation over each text's tokens."""
    if how not in ("max", "mean"):
        raise AlignlabError(f"unknown pooling {how!r} (expected max or mean)")
    acts, index = token_activations(model, tokenizer, texts, layer, batch_size)
    return pool_features(sae, acts, index, len(texts), how)


def auroc_per_feature(feature_acts, labels) -> np.ndarray:
    """AUROC of every column of [n, d_sae] as a score for the label (Mann-Whitney U with tied ranks
    averaged, so a feature constant over the texts scores exactly 0.5)."""
    x = as_numpy(feature_acts)
    if x.ndim != 2:
        raise AlignlabError(f"feature activations must be [n_texts, d_sae], got shape {x.shape}")
    y = binary_labels(labels, len(x))
    ranks = rankdata(x, axis=0, method="average")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return (ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def rank_features(feature_acts, labels, top: int | None = None) -> list[dict]:
    """Features ranked by how well their activation separates texts with label True from the rest.

    Each record: feature, auroc (0.5 = unrelated, 1 = fires more on every positive than on any negative),
    mean_pos / mean_neg (mean activation per class), freq_pos / freq_neg (fraction of texts where it
    fires). Best first: auroc, then the gap in mean activation, then the feature index. Features that
    fire *less* on positives sit at the bottom (auroc < 0.5).
    """
    x = as_numpy(feature_acts)
    auc = auroc_per_feature(x, labels)
    y = binary_labels(labels, len(x))
    mean_pos, mean_neg = x[y].mean(0), x[~y].mean(0)
    freq_pos, freq_neg = (x[y] > 0).mean(0), (x[~y] > 0).mean(0)
    order = np.lexsort((np.arange(x.shape[1]), -(mean_pos - mean_neg), -auc))
    if top is not None:
        order = order[:top]
    return [{"feature": int(j), "auroc": float(auc[j]), "mean_pos": float(mean_pos[j]),
             "mean_neg": float(mean_neg[j]), "freq_pos": float(freq_pos[j]), "freq_neg": float(freq_neg[j])}
            for j in order]


def top_activating_examples(sae: SparseAutoencoder, model, tokenizer, texts: Sequence[str], layer: int,
                            feature: int, k: int = 10, context: int = 8, batch_size: int = 32) -> list[dict]:
    """The `k` tokens on which `feature` fires most, best first (only tokens where it fires at all).

    Each record: text_index, position (token index in the text), token_id, token (decoded), activation,
    left / right (decoded `context` tokens either side) and context (left + [[token]] + right).
    """
    if not 0 <= feature < sae.d_sae:
        raise AlignlabError(f"feature {feature} is out of range for an SAE with d_sae={sae.d_sae}")
    if k < 1 or context < 0:
        raise AlignlabError("top_activating_examples: k must be >= 1 and context >= 0")
    acts, index = token_activations(model, tokenizer, texts, layer, batch_size)
    values = torch.cat([f[:, feature] for _, f in _encode_chunks(sae, acts)])
    # stable sort by activation: ties keep reading order (text, position)
    order = torch.sort(-values, stable=True).indices[:k]
    ids_cache: dict[int, list[int]] = {}
    examples = []
    for row in order.tolist():
        if values[row] <= 0:
            break
        text_idx, pos = (int(v) for v in index[row])
        ids = ids_cache.setdefault(text_idx, tokenizer(texts[text_idx])["input_ids"])
        left = tokenizer.decode(ids[max(0, pos - context) : pos])
        token = tokenizer.decode(ids[pos : pos + 1])
        right = tokenizer.decode(ids[pos + 1 : pos + 1 + context])
        examples.append({"text_index": text_idx, "position": pos, "token_id": ids[pos], "token": token,
                         "activation": float(values[row]), "left": left, "right": right,
                         "context": f"{left}[[{token}]]{right}"})
    return examples
