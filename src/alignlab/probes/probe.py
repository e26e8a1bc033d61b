"""A linear probe on residual-stream features: fit, score (numpy or differentiable torch), calibrate, save.

score(x) = ((x - mean) / scale) · direction + bias, a logit. Tensors are saved as safetensors and everything
else as JSON next to them; nothing is ever pickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression

from alignlab import AlignlabError
from alignlab.artifacts import atomic_file, read_json, write_json_atomic
from alignlab.probes.metrics import as_numpy, binary_labels, threshold_at_fpr
from alignlab.registry import Registry

FORMAT = "alignlab-linear-probe"
FORMAT_VERSION = 1
_TENSORS = ("direction", "mean", "scale")
_MIN_SCALE = 1e-6  # features that never vary are left unscaled instead of divided by ~0


@dataclass
class LinearProbe:
    direction: np.ndarray  # [d_model], acts on standardised features
    bias: float
    mean: np.ndarray  # [d_model]
    scale: np.ndarray  # [d_model]
    threshold: float = 0.0  # score > threshold flags an example
    # model, layer, n_layers, aggregation, position ("completion" | "prompt_last"), method, data, ...
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _TENSORS:
            setattr(self, name, as_numpy(getattr(self, name), np.float32).reshape(-1))
        self.bias, self.threshold = float(self.bias), float(self.threshold)
        if not (len(self.direction) == len(self.mean) == len(self.scale)):
            raise AlignlabError("probe direction, mean and scale must have the same length")
        self.metadata = {**self.metadata, "d_model": self.d_model}

    @property
    def d_model(self) -> int:
        return len(self.direction)

    @property
    def layer(self) -> int:
        """The decoder layer the probe reads, from its metadata; a one-line error for a probe fitted on bare
        features without one (fit on `harvest` output with `fit_probe`, or pass metadata={"layer": L})."""
        layer = self.metadata.get("layer")
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise AlignlabError(f"probe metadata has no integer 'layer' (got {layer!r}): fit it with "
                                "alignlab.fit_probe on harvest() features, or pass metadata={'layer': L}")
        return layer

    @property
    def aggregation(self) -> str:
        return self.metadata.get("aggregation", "mean")

    def score(self, X):
        """Logits for X ([N, D] or [D]). A torch X gives a torch result, differentiable w.r.t. X."""
        if isinstance(X, torch.Tensor):
            if X.shape[-1] != self.d_model:
                raise AlignlabError(f"probe expects d_model={self.d_model}, got {X.shape[-1]} features")
            # at least float32: a bf16 standardisation would cost the logit most of its digits
            dtype = torch.promote_types(X.dtype, torch.float32) if X.is_floating_point() else torch.float32
            direction, mean, scale = (
                torch.as_tensor(getattr(self, n), device=X.device, dtype=dtype) for n in _TENSORS
            )
            return ((X.to(dtype) - mean) / scale) @ direction + self.bias
        X = as_numpy(X, np.float32)
        if X.shape[-1] != self.d_model:
            raise AlignlabError(f"probe expects d_model={self.d_model}, got {X.shape[-1]} features")
        return ((X - self.mean) / self.scale) @ self.direction + np.float32(self.bias)

    def predict(self, X):
        return self.score(X) > self.threshold

    def calibrate_threshold(self, X_neg, fpr: float = 0.01) -> float:
        """Set the threshold so that at most `fpr` of these negatives score above it; return it."""
        self.threshold = threshold_at_fpr(as_numpy(self.score(as_numpy(X_neg, np.float32))), fpr)
        self.metadata["calibration"] = {"fpr": fpr, "n_negatives": len(as_numpy(X_neg))}
        return self.threshold

    def check_compatible(
        self, model_d_model: int, layer: int | None = None, n_layers: int | None = None
    ) -> None:
        """Raise AlignlabError naming the field (d_model or layer) if this probe does not fit the model.

        `layer` is the layer the caller means to read; `n_layers` the model's depth (negative indices are
        resolved against it). The probe's own layer comes from metadata["layer"], if recorded.
        """
        if model_d_model != self.d_model:
            raise AlignlabError(f"probe d_model mismatch: probe has {self.d_model}, model {model_d_model}")
        trained = self.metadata.get("layer")
        for what, value in (("its layer", trained), ("layer", layer)):
            if n_layers is not None and value is not None and not -n_layers <= value < n_layers:
                msg = f"{what} {value} is out of range for {n_layers} layers"
                raise AlignlabError(f"probe layer mismatch: {msg}")
        if layer is None or trained is None:
            return
        if n_layers is not None:
            layer, trained = layer % n_layers, trained % n_layers
        if layer != trained:
            raise AlignlabError(f"probe layer mismatch: probe was trained on layer {trained}, not {layer}")

    def save(self, path: str | Path) -> Path:
        """Write <dir>/probe.safetensors + probe.json (or X.safetensors + X.json for a .safetensors path)."""
        tensors_path, json_path = _paths(path)
        with atomic_file(tensors_path) as tmp:
            save_file({n: np.ascontiguousarray(getattr(self, n)) for n in _TENSORS}, tmp)
        write_json_atomic(json_path, {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "tensors": tensors_path.name,
            "d_model": self.d_model,
            "bias": self.bias,
            "threshold": self.threshold,
            "metadata": self.metadata,
        })
        return json_path

    @classmethod
    def load(cls, path: str | Path) -> LinearProbe:
        tensors_path, json_path = _paths(path)
        meta = read_json(json_path, what="probe metadata")
        if meta.get("format") != FORMAT:
            raise AlignlabError(f"probe metadata {json_path} is not an {FORMAT} file")
        if meta.get("version") != FORMAT_VERSION:
            raise AlignlabError(f"probe {json_path} is version {meta.get('version')}, not {FORMAT_VERSION}")
        if not tensors_path.is_file():
            raise AlignlabError(f"probe tensors {tensors_path} do not exist")
        try:
            tensors = load_file(str(tensors_path))
        except Exception as err:  # safetensors raises its own error types for truncated or garbled files
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise AlignlabError(f"probe tensors {tensors_path} are corrupt: {first}") from None
        d_model = meta.get("d_model")
        for name in _TENSORS:
            if name not in tensors:
                raise AlignlabError(f"probe tensors {tensors_path} lack {name!r}")
            if tensors[name].shape != (d_model,):
                raise AlignlabError(
                    f"probe {name} in {tensors_path} has shape {tensors[name].shape}, expected ({d_model},)"
                )
            if not np.isfinite(tensors[name]).all():
                raise AlignlabError(f"probe {name} in {tensors_path} has non-finite values")
        for name in ("bias", "threshold"):
            if not isinstance(meta.get(name), (int, float)) or not math.isfinite(meta[name]):
                raise AlignlabError(f"probe metadata {json_path} has no finite {name!r}")
        if not isinstance(meta.get("metadata", {}), dict):
            raise AlignlabError(f"probe metadata {json_path}: 'metadata' must be an object")
        layer = meta.get("metadata", {}).get("layer")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise AlignlabError(f"probe metadata {json_path}: 'layer'={layer!r} must be an integer")
        for name in ("position", "aggregation"):
            if not isinstance(meta.get("metadata", {}).get(name, ""), str):
                raise AlignlabError(f"probe metadata {json_path}: {name!r} must be a string")
        return cls(**{n: tensors[n] for n in _TENSORS}, bias=meta["bias"], threshold=meta["threshold"],
                   metadata=meta.get("metadata", {}))


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix(".safetensors"), path.with_suffix(".json")
    return path / "probe.safetensors", path / "probe.json"


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = as_numpy(X)
    if X.ndim != 2:
        raise AlignlabError(f"probe features must be [N, D], got shape {X.shape}")
    if not np.isfinite(X).all():
        raise AlignlabError("probe features contain NaN or inf")
    return X, binary_labels(y, len(X))


def fit_logistic(X, y, C: float = 1.0, max_iter: int = 2000, metadata: dict | None = None) -> LinearProbe:
    """L2-regularised logistic regression on standardised features (scikit-learn, lbfgs; deterministic)."""
    X, y = _check_xy(X, y)
    mean = X.mean(0)
    scale = X.std(0)
    scale = np.where(scale > _MIN_SCALE, scale, 1.0)
    clf = LogisticRegression(C=C, l1_ratio=0.0, solver="lbfgs", max_iter=max_iter)
    clf.fit((X - mean) / scale, y)
    return LinearProbe(direction=clf.coef_[0], bias=float(clf.intercept_[0]), mean=mean, scale=scale,
                       metadata={**(metadata or {}), "method": "logistic", "C": C, "n_train": len(y),
                                 "n_train_pos": int(y.sum())})


def fit_diff_of_means(X, y, metadata: dict | None = None) -> LinearProbe:
    """Unit direction from the negative to the positive class mean; score 0 at the midpoint of the means.

    No standardisation (scale 1), so the score is the signed distance along the direction in raw units.
    """
    X, y = _check_xy(X, y)
    mu_pos, mu_neg = X[y].mean(0), X[~y].mean(0)
    diff = mu_pos - mu_neg
    norm = np.linalg.norm(diff)
    if norm == 0:
        raise AlignlabError("diff of means is zero: the class means coincide")
    return LinearProbe(direction=diff / norm, bias=0.0, mean=(mu_pos + mu_neg) / 2, scale=np.ones_like(diff),
                       metadata={**(metadata or {}), "method": "diff_of_means", "n_train": len(y),
                                 "n_train_pos": int(y.sum())})


# Probe types, one place: a fitter takes ([N, D] features, labels, metadata=...) and returns a LinearProbe
# (docs/extending.md). `probe fit --method`, the studies' `probe_method` and `fit_probe` read this registry.
PROBE_FITTERS: Registry = Registry("probe method")
PROBE_FITTERS.register("logistic", fit_logistic)
PROBE_FITTERS.register("diff_of_means", fit_diff_of_means)


def fit_probe(features, labels, method: str = "logistic", *, layer: int | None = None, metadata: dict | None = None,
              fpr: float | None = None) -> LinearProbe:
    """Fit a probe of a registered `method` and give it what ProbeReward, the probe loss and token scores need.

    `features` is `harvest(...)` output (a {layer: [N, D]} dict that knows its position and pooling): the probe
    records the layer (`layer`, or the only one harvested), position, aggregation and depth. A bare [N, D] array
    needs `metadata={"layer": L, ...}`: without a layer it is refused here, not later inside a trainer.
    With `fpr`, the threshold is set at that false-positive rate on the negatives."""
    meta = dict(metadata or {})
    if isinstance(features, dict):
        layers = sorted(features)
        if layer is None and len(layers) != 1:
            raise AlignlabError(f"fit_probe: the features hold layers {layers}: pass layer=")
        layer = layers[0] if layer is None else layer
        info = getattr(features, "info", {})
        key = layer % info["n_layers"] if "n_layers" in info else layer
        if key not in features:
            raise AlignlabError(f"fit_probe: layer {layer} was not harvested (layers {layers})")
        meta = {**info, **meta, "layer": key}
        X = features[key]
    else:
        X = features
        if layer is not None:
            meta["layer"] = layer
    if isinstance(meta.get("layer"), bool) or not isinstance(meta.get("layer"), int):
        raise AlignlabError("fit_probe: the features carry no layer: pass harvest() output, or layer= / "
                            "metadata={'layer': L} for a bare array")
    X = as_numpy(X, np.float32)
    probe = PROBE_FITTERS[method](X, labels, metadata=meta)
    if fpr is not None:
        probe.calibrate_threshold(X[~binary_labels(labels, len(X))], fpr=fpr)
    return probe
