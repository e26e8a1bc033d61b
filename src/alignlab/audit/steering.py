"""Activation steering (CAA / ActAdd style): add or ablate a direction in one decoder layer's residual output.

The intervention is a forward hook on decoder layer L, so it applies to any forward pass and to `generate`
with a KV cache (the hook fires on the prompt, then on each new token as it is fed through):
- mode "add":    out = x + multiplier · v, with v the unit direction (normalize=True) or the raw vector.
- mode "ablate": out = x - multiplier · (x · u) u, with u the unit direction. multiplier 1 is directional
  ablation (no component along u is left), 0 is no change, 2 reflects the component (x·u -> -x·u); values
  in between remove that fraction of it. Ablation always uses the unit direction (normalize must be True).
Positions (default "all"):
- "all": every position of every forward pass, the prompt included (the steering-vectors library's default;
  during cached generation this equals steering the whole sequence in one pass).
- "new": only the positions that predict new tokens: the last position of a pass that starts from an empty
  cache (the last prompt token: prompts must be left-padded, as `sample` does) and every position fed on top
  of a non-empty cache. The earlier prompt positions, and so their keys and values, are left alone; this is
  CAA's "from the end of the prompt on".
The hook is prepended, so every other hook on layer L (an ActivationTap, a probe reward) reads the steered
stream, i.e. what layer L + 1 receives. Two steers on the same layer apply innermost first.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from alignlab import AlignlabError
from alignlab.artifacts import new_figure, save_figure
from alignlab.config import check_rules, doc
from alignlab.models.sampling import sample
from alignlab.models.tap import config_value, find_decoder_layers, resolve_layers
from alignlab.probes.probe import LinearProbe

Mode = Literal["add", "ablate"]
Positions = Literal["all", "new"]
MODES = ("add", "ablate")
POSITIONS = ("all", "new")


# --- directions ---------------------------------------------------------------------------------------------


def as_direction(vector, d_model: int | None = None, what: str = "direction") -> torch.Tensor:
    """Any 1-D vector (torch, numpy, list: a probe direction, an SAE decoder row) as a float32 CPU tensor.

    Raises AlignlabError if it is not 1-D, has the wrong size, is not finite or has zero norm.
    """
    if isinstance(vector, torch.Tensor):
        vec = vector.detach().to("cpu", torch.float32)
    else:
        try:
            vec = torch.as_tensor(np.asarray(vector, dtype=np.float32))
        except (TypeError, ValueError):
            raise AlignlabError(f"{what} must be a vector of numbers, got {type(vector).__name__}") from None
    vec = vec.squeeze(0) if vec.dim() == 2 and vec.shape[0] == 1 else vec  # a [1, D] row is a vector too
    if vec.dim() != 1:
        raise AlignlabError(f"{what} must be 1-D, got shape {tuple(vec.shape)}")
    if d_model is not None and vec.shape[0] != d_model:
        raise AlignlabError(f"{what} has size {vec.shape[0]}, but the model's d_model is {d_model}")
    if not torch.isfinite(vec).all():
        raise AlignlabError(f"{what} has non-finite values (NaN or inf)")
    if float(vec.norm()) == 0.0:
        raise AlignlabError(f"{what} has zero norm")
    return vec.clone()


def direction_from_probe(probe: LinearProbe) -> torch.Tensor:
    """The probe's direction in raw residual space: direction / scale (not normalised).

    score(x) = ((x - mean) / scale) · w + b = x · (w / scale) + const, so w / scale is the score's gradient:
    adding t · v / |v| raises the score by t · |v|, faster than along any other unit vector.
    """
    return as_direction(np.asarray(probe.direction) / np.asarray(probe.scale), what="probe direction")


def diff_of_means_direction(acts_pos, acts_neg) -> torch.Tensor:
    """mean(acts_pos) - mean(acts_neg) over [N, D] activations (CAA's vector; not normalised)."""
    pos, neg = (_as_matrix(a, name) for a, name in ((acts_pos, "acts_pos"), (acts_neg, "acts_neg")))
    if pos.shape[1] != neg.shape[1]:
        raise AlignlabError(f"acts_pos has {pos.shape[1]} features but acts_neg has {neg.shape[1]}")
    return as_direction(pos.mean(0) - neg.mean(0), what="diff of means (the class means coincide?)")


def _as_matrix(acts, name: str) -> torch.Tensor:
    x = acts.detach().to("cpu", torch.float64) if isinstance(acts, torch.Tensor) else torch.as_tensor(
        np.asarray(acts, dtype=np.float64))
    if x.dim() != 2 or x.shape[0] == 0:
        raise AlignlabError(f"{name} must be a non-empty [N, D] matrix, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise AlignlabError(f"{name} has non-finite values (NaN or inf)")
    return x


# --- the hook -------------------------------------------------------------------------------------------------


def _d_model(model: nn.Module) -> int | None:
    return config_value(model, "hidden_size", "n_embd")


def _past_length(args: tuple, kwargs: dict) -> int:
    """Positions already in the KV cache handed to a decoder layer (0 without a cache: a full pass)."""
    from transformers.cache_utils import Cache

    for value in (*args, *kwargs.values()):
        if isinstance(value, Cache):
            return int(value.get_seq_length(0))
    return 0


class Steering:
    """A steering hook on one decoder layer; use `steer(...)` to build it, and `with` to attach it.

    `vector` is what one unit of multiplier adds (mode "add") or the unit direction removed (mode "ablate");
    `n_calls` counts the forward passes through the layer that were steered.
    """

    def __init__(self, model: nn.Module, layer: int, direction, multiplier: float = 1.0, mode: Mode = "add",
                 normalize: bool = True, positions: Positions = "all"):
        if mode not in MODES:
            raise AlignlabError(f"steering mode {mode!r} is unknown (expected add or ablate)")
        if positions not in POSITIONS:
            raise AlignlabError(f"steering positions {positions!r} is unknown (expected all or new)")
        if mode == "ablate" and not normalize:
            raise AlignlabError("steering normalize=False is not allowed with mode ablate (a projection needs a "
                                "unit direction)")
        if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real) or not math.isfinite(multiplier):
            raise AlignlabError(f"steering multiplier must be a finite number, got {multiplier!r}")
        self.blocks = find_decoder_layers(model)
        self.layer = resolve_layers([layer], len(self.blocks))[0]
        vec = as_direction(direction, _d_model(model))
        self.vector = vec / vec.norm() if normalize else vec
        self.multiplier = float(multiplier)
        self.mode = mode
        self.positions = positions
        self.n_calls = 0
        self._past = 0
        self._handles: list = []
        self._cast: dict[tuple, torch.Tensor] = {}  # the vector on each (device, dtype) met, moved once

    def _vec(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._cast:
            # add: the multiplier is folded in before the cast, so x + m·v is one rounding in the model's dtype
            vec = self.multiplier * self.vector if self.mode == "add" else self.vector
            self._cast[key] = vec.to(like.device, like.dtype if self.mode == "add" else torch.float32)
        return self._cast[key]

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        """The steered version of a [..., D] residual tensor (all positions; out of place)."""
        if hidden.shape[-1] != self.vector.shape[0]:
            raise AlignlabError(f"direction has size {self.vector.shape[0]}, layer output has {hidden.shape[-1]}")
        vec = self._vec(hidden)
        if self.mode == "add":
            return hidden + vec
        # project in float32: a bf16 dot product would leave a visible residue along u
        coef = (hidden.float() @ vec) * self.multiplier
        return (hidden.float() - coef[..., None] * vec).to(hidden.dtype)

    def _pre_hook(self, module, args, kwargs):
        self._past = _past_length(args, kwargs)

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if self.positions == "all" or self._past > 0:
            steered = self.apply(hidden)
        else:  # "new" on a pass from an empty cache: only the last position predicts a new token
            steered = torch.cat([hidden[:, :-1], self.apply(hidden[:, -1:])], dim=1)
        self.n_calls += 1
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    def __enter__(self) -> Steering:
        if self._handles:
            raise AlignlabError("this steering hook is already attached")
        handles = [self.blocks[self.layer].register_forward_hook(self._hook, prepend=True)]
        if self.positions == "new":  # layer 0 runs first: its cache still holds only the past positions
            handles.append(self.blocks[0].register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self._handles = handles
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def steer(model: nn.Module, layer: int, direction, multiplier: float = 1.0, mode: Mode = "add",
          normalize: bool = True, positions: Positions = "all") -> Steering:
    """Context manager: steer `model` at the output of decoder `layer` while inside the `with` block.

    See the module docstring for modes, the multiplier and positions. The hook is removed on exit, also when
    the block raises. Arguments are checked here, before anything is attached.
    """
    return Steering(model, layer, direction, multiplier, mode, normalize, positions)


# --- behaviour rate vs multiplier ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SteeringConfig:
    layer: int = doc("decoder layer whose residual output is steered (negative counts from the end)", -1)
    # with normalize, in absolute residual units: choose them against the layer's typical residual norm
    multipliers: tuple[float, ...] = doc("steering strengths: multiples of the unit direction (raw vector if "
                                         "normalize is false)", (-8.0, -4.0, 0.0, 4.0, 8.0))
    mode: str = doc("'add' multiplier x direction, or 'ablate' that fraction of the component along it", "add")
    positions: str = doc("'all' positions, or 'new' (from the last prompt token on: CAA)", "all")
    normalize: bool = doc("add the unit direction (true) or the raw vector (false)", True)
    n_per_prompt: int = doc("samples per prompt per multiplier (common random numbers across multipliers)", 8)
    temperature: float = doc("sampling temperature under steering", 1.0)
    max_new_tokens: int = doc("completion length under steering", 32)
    seed: int = doc("sampling seed, the same for every multiplier", 0)

    def check(self) -> SteeringConfig:
        mults = self.multipliers
        finite = isinstance(mults, (list, tuple)) and all(
            isinstance(m, numbers.Real) and not isinstance(m, bool) and math.isfinite(m) for m in mults)
        rules = [
            ("multipliers", finite and len(mults) > 0, "must be a non-empty list of finite numbers"),
            ("mode", self.mode in MODES, "must be add or ablate"),
            ("positions", self.positions in POSITIONS, "must be all or new"),
            ("n_per_prompt", self.n_per_prompt >= 1, "must be at least 1"),
            ("temperature", self.temperature >= 0 and math.isfinite(self.temperature), "must be >= 0 (0: greedy)"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be at least 1"),
        ]
        return check_rules(self, "steering config", rules)


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial rate (95% by default); sane at 0 and n hits, unlike the Wald one."""
    if n <= 0:
        raise AlignlabError(f"wilson_interval needs n >= 1, got {n}")
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def steering_curve(model: nn.Module, tokenizer, prompts: Sequence[str], direction, cfg: SteeringConfig,
                   behaviour: Callable[[int, str], bool],
                   also: dict[str, Callable[[int, str], bool]] | None = None) -> list[dict]:
    """Behaviour rate per multiplier: sample under steering, judge each completion with behaviour(i, text).

    Every multiplier samples with the same seed (common random numbers), so differences between points
    come from the steering, not from sampling noise. Returns one record per multiplier, in cfg's order:
    {multiplier, rate, hits, n, ci_low, ci_high} with a 95% Wilson interval, plus `{name}_rate` for each judge
    in `also` (e.g. whether the output still parses: steering hard enough breaks any behaviour).
    """
    cfg.check()
    if not prompts:
        raise AlignlabError("steering_curve needs at least one prompt")
    records = []
    for multiplier in cfg.multipliers:
        with steer(model, cfg.layer, direction, multiplier, cfg.mode, cfg.normalize, cfg.positions):
            completions = sample(model, tokenizer, list(prompts), n_per_prompt=cfg.n_per_prompt,
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        hits = sum(_judge(behaviour, i, text) for i, texts in enumerate(completions) for text in texts)
        n = len(prompts) * cfg.n_per_prompt
        low, high = wilson_interval(hits, n)
        extra = {f"{name}_rate": sum(_judge(judge, i, text) for i, texts in enumerate(completions) for text in texts)
                 / n for name, judge in (also or {}).items()}
        records.append({"multiplier": float(multiplier), "rate": hits / n, "hits": hits, "n": n,
                        "ci_low": low, "ci_high": high, **extra})
    return records


def _judge(behaviour: Callable[[int, str], bool], index: int, text: str) -> bool:
    verdict = behaviour(index, text)
    if not isinstance(verdict, (bool, np.bool_)):
        raise AlignlabError(f"behaviour must return a bool, got {type(verdict).__name__}")
    return bool(verdict)


def plot_steering_curve(curves: dict[str, list[dict]], path: str | Path, title: str = "",
                        ylabel: str = "behaviour rate") -> None:
    """Rate vs multiplier, one line (with its Wilson interval as a band) per label; a PNG written atomically."""
    if not curves or any(not records for records in curves.values()):
        raise AlignlabError("plot_steering_curve needs at least one label, each with at least one point")
    fig = new_figure((6.5, 3.8))
    ax = fig.add_subplot()
    for label, records in curves.items():
        pts = sorted(records, key=lambda r: r["multiplier"])
        xs = [r["multiplier"] for r in pts]
        line = ax.plot(xs, [r["rate"] for r in pts], marker="o", label=label)[0]
        ax.fill_between(xs, [r["ci_low"] for r in pts], [r["ci_high"] for r in pts], color=line.get_color(),
                        alpha=0.15, linewidth=0)
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("steering multiplier")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)
