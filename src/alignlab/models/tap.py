"""Capture the residual stream at chosen decoder layers of any HF causal LM, and select tokens from it.

A tap records each layer's OUTPUT (the residual stream after the block). In transformers 5.23,
`output_hidden_states=True` gives `hidden_states[i + 1]` == the output of layer i for every layer but the
last: `hidden_states[-1]` is the last layer's output after the final norm (Llama, Qwen2, Gemma, GPT-2 and
GPT-NeoX alike). The tap never applies the final norm, so tapping the last layer gives the raw residual.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import torch
from torch import nn

from alignlab import AlignlabError
from alignlab.choices import Aggregation
from alignlab.models.batch import left_pad  # noqa: F401 (re-exported: callers import it from here)

# Attribute paths to the decoder layer list, tried before the generic search.
_LAYER_PATHS = (
    ("model", "layers"),  # Llama, Qwen2, Gemma, Mistral
    ("transformer", "h"),  # GPT-2
    ("gpt_neox", "layers"),  # GPT-NeoX, Pythia
    ("model", "language_model", "layers"),  # multimodal wrappers around a text decoder
)
# Attributes that wrap a model: PEFT (base_model.model), DDP (module), torch.compile (_orig_mod).
_WRAPPER_ATTRS = ("base_model", "model", "module", "_orig_mod")
_LIST_NAMES = ("layers", "h", "blocks", "layer")


def _get_path(obj, path: Sequence[str]):
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def config_value(model: nn.Module, *names: str) -> int | None:
    """The first of `names` set on the model's (text) config; None for a bare module."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return next((v for v in (getattr(config, n, None) for n in names) if v), None)


def _n_hidden_layers(model: nn.Module) -> int | None:
    return config_value(model, "num_hidden_layers", "n_layer")


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (Llama/Qwen2/Gemma/Mistral, GPT-2, GPT-NeoX, wrapped or not)."""
    seen: set[int] = set()
    frontier = [model]
    for _ in range(4):  # PEFT nests three deep: PeftModel.base_model.model.model.layers
        nxt = []
        for obj in frontier:
            if id(obj) in seen or not isinstance(obj, nn.Module):
                continue
            seen.add(id(obj))
            for path in _LAYER_PATHS:
                found = _get_path(obj, path)
                if isinstance(found, nn.ModuleList) and len(found) > 0:
                    return found
            nxt += [getattr(obj, attr, None) for attr in _WRAPPER_ATTRS]
        frontier = nxt
    # Generic fallback: the outermost ModuleList with a layer-list name and, if known, the configured depth.
    want = _n_hidden_layers(model)
    candidates = [
        (name.count("."), name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and name.rsplit(".", 1)[-1] in _LIST_NAMES
        and (want is None or len(module) == want)
    ]
    if not candidates:
        raise AlignlabError(f"cannot find the decoder layers of {type(model).__name__} (no known layer list)")
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def _callees(fn, seen: set[int], depth: int = 0):
    """The modules a forward wrapper is bound to, through bound methods, `functools.wraps` chains, accelerate's
    `model_forward` and closure cells."""
    if depth > 8 or id(fn) in seen:
        return
    seen.add(id(fn))
    if isinstance(fn, types.MethodType):
        if isinstance(fn.__self__, nn.Module):
            yield fn.__self__
        yield from _callees(fn.__func__, seen, depth + 1)
    for attr in ("__wrapped__", "model_forward"):
        if hasattr(fn, attr):
            yield from _callees(getattr(fn, attr), seen, depth + 1)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(value):
            yield from _callees(value, seen, depth + 1)


def foreign_forward(model: nn.Module) -> nn.Module | None:
    """The other module that `model`'s instance-level `forward` runs, if it runs one. A trainer's mixed-precision
    wrapper (accelerate's) closes over the model's bound forward; `copy.deepcopy` of the trained model copies
    the wrapper but not that closure, so the copy's forward runs the original's weights (and its hooks)."""
    forward = model.__dict__.get("forward")
    if forward is None:
        return None
    return next((m for m in _callees(forward, set()) if m is not model), None)


def own_forward(model: nn.Module) -> nn.Module:
    """Drop an instance-level `forward` that runs another module (see `foreign_forward`): the model then runs
    its own class forward, in its own precision. Returns the model."""
    if foreign_forward(model) is not None:
        del model.__dict__["forward"]
        model.__dict__.pop("_original_forward", None)
    return model


def resolve_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """Normalise layer indices (negative counts from the end) and check they are in range."""
    out = []
    for layer in layers:
        if not -n_layers <= layer < n_layers:
            raise AlignlabError(f"layer {layer} is out of range for a model with {n_layers} layers")
        out.append(layer % n_layers)
    return out


class _EarlyExit(Exception):
    """Raised by the deepest hook inside ActivationTap.run: the rest of the forward pass is not needed."""


class ActivationTap:
    """Record the residual stream output by chosen decoder layers into `activations[layer]` ([B, T, D]).

    Use as a context manager (hooks are removed on exit). Layer keys are normalised (-1 -> n_layers - 1).
    - early_exit: inside `run`, stop the forward pass after the deepest requested layer (no later layers,
      no LM head). A plain `model(...)` call inside the context still runs in full.
    - detach: with False the captured tensors stay in the autograd graph (for a loss on activations).
    - accumulate: concatenate along the sequence dim over successive forward calls, for `generate` with
      a KV cache where each call sees only the new token(s). The last generated token is never fed
      through the model, so after generate the tap holds all positions but the last.
    With gradient checkpointing the backward recomputation fires the hooks again: capture with it off.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        *,
        early_exit: bool = False,
        detach: bool = True,
        accumulate: bool = False,
    ):
        if not layers:
            raise AlignlabError("ActivationTap needs at least one layer")
        if early_exit and accumulate:
            raise AlignlabError("ActivationTap: early_exit and accumulate cannot be combined")
        if foreign_forward(model) is not None:
            raise AlignlabError(f"{type(model).__name__}'s forward runs another copy of the model (a deepcopy made "
                                "after training keeps the trainer's mixed-precision wrapper around the original's "
                                "forward): copy before training, or call alignlab.models.own_forward(model) first")
        self.model = model
        self.blocks = find_decoder_layers(model)
        self.n_layers = len(self.blocks)
        self.layers = sorted(set(resolve_layers(layers, self.n_layers)))
        self.early_exit = early_exit
        self.detach = detach
        self.accumulate = accumulate
        self.activations: dict[int, torch.Tensor] = {}
        self._handles: list = []
        self._in_run = False

    def _hook(self, layer: int):
        deepest = layer == self.layers[-1]

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if self.detach:
                hidden = hidden.detach()
            if self.accumulate and layer in self.activations:
                hidden = torch.cat([self.activations[layer], hidden], dim=1)
            self.activations[layer] = hidden
            if deepest and self.early_exit and self._in_run:
                raise _EarlyExit

        return hook

    def __enter__(self) -> ActivationTap:
        if self._handles:
            raise AlignlabError("ActivationTap is already attached")
        self._handles = [self.blocks[i].register_forward_hook(self._hook(i)) for i in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        self.activations = {}

    def run(self, model: nn.Module | None = None, **inputs) -> dict[int, torch.Tensor]:
        """One forward pass (fresh activations), stopping early if `early_exit`. Returns `activations`."""
        if not self._handles:
            raise AlignlabError("ActivationTap.run must be called inside its `with` block")
        if model is not None and model is not self.model:
            raise AlignlabError("ActivationTap.run was given a different model than the one tapped")
        self.clear()
        inputs.setdefault("use_cache", False)  # a cache would be thrown away (and only half filled on exit)
        self._in_run = True
        try:
            self.model(**inputs)
        except _EarlyExit:
            pass
        finally:
            self._in_run = False
        missing = [layer for layer in self.layers if layer not in self.activations]
        if missing:
            raise AlignlabError(f"ActivationTap: the forward pass of {type(self.model).__name__} never reached "
                                f"decoder layer(s) {missing} (does its forward run these layers?)")
        return self.activations


# --- token selection -------------------------------------------------------------------------------------


def _real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each token among its row's real tokens (0-based); padding positions get -1."""
    mask = attention_mask.bool()
    return torch.where(mask, mask.long().cumsum(-1) - 1, torch.full_like(mask, -1, dtype=torch.long))


def _as_lengths(prompt_lengths, batch: int, device) -> torch.Tensor:
    lengths = torch.as_tensor(prompt_lengths, dtype=torch.long, device=device)
    if lengths.shape != (batch,):
        raise AlignlabError(f"expected {batch} prompt lengths, got shape {tuple(lengths.shape)}")
    return lengths


def completion_mask(attention_mask: torch.Tensor, prompt: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """[B, T] bool mask of completion tokens in a batch of prompt+completion sequences.

    `prompt` is either the prompt length of each row (real tokens, padding excluded) or a [B, T] prompt
    mask. Works for left and right padding: positions are counted among each row's real tokens.
    """
    mask = attention_mask.bool()
    if isinstance(prompt, torch.Tensor) and prompt.shape == mask.shape:
        return mask & ~prompt.bool()
    lengths = _as_lengths(prompt, mask.shape[0], mask.device)
    return mask & (_real_positions(mask) >= lengths[:, None])


def last_prompt_mask(attention_mask: torch.Tensor, prompt_lengths) -> torch.Tensor:
    """[B, T] bool mask selecting one token per row: the last prompt token, just before the completion.

    `prompt_lengths` counts each row's prompt tokens (padding excluded), as a sequence or a [B] tensor.
    """
    mask = attention_mask.bool()
    lengths = _as_lengths(prompt_lengths, mask.shape[0], mask.device)
    if (lengths < 1).any() or (lengths > mask.sum(-1)).any():
        raise AlignlabError("each prompt length must be between 1 and the row's number of real tokens")
    return _real_positions(mask) == (lengths - 1)[:, None]


def aggregate(acts: torch.Tensor, mask: torch.Tensor, how: Aggregation = "mean") -> torch.Tensor:
    """Reduce [B, T, D] activations over the positions `mask` ([B, T] bool) selects: [B, D].

    "last" takes each row's last selected position. Every row must select at least one position.
    Unselected positions are replaced (not multiplied) so NaNs at padding cannot leak into the result.
    """
    if acts.dim() != 3 or mask.shape != acts.shape[:2]:
        shapes = f"mask {tuple(mask.shape)}, activations {tuple(acts.shape)}"
        raise AlignlabError(f"aggregate: mask must be [B, T] of activations [B, T, D]; got {shapes}")
    mask = mask.bool().to(acts.device)
    counts = mask.sum(-1)
    if (counts == 0).any():
        row = int((counts == 0).nonzero()[0])
        raise AlignlabError(f"aggregate: row {row} selects no tokens")
    sel = mask[..., None]
    if how == "mean":
        return torch.where(sel, acts, torch.zeros_like(acts)).sum(1) / counts[:, None].to(acts.dtype)
    if how == "max":
        return torch.where(sel, acts, torch.full_like(acts, float("-inf"))).max(1).values
    if how == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, positions, -1).max(-1).values
        return acts[torch.arange(acts.shape[0], device=acts.device), last]
    raise AlignlabError(f"unknown aggregation {how!r} (expected mean, max or last)")
