"""The 'ekfac' attribution method: influence functions with EK-FAC curvature (Grosse et al. 2023), by kronfluence.

score(doc) = mean over queries q of ∇f(q)ᵀ (G + λI)⁻¹ ∇L(doc), with f(q) the query's completion loss, L(doc) the
document's loss (`AttributionConfig.loss`, as for the gradient methods) and G the eigenvalue-corrected
Kronecker-factored Gauss-Newton (true Fisher) of the training loss, fitted once per model on the documents. A
positive score means that up-weighting the document lowers the query's loss: it supports the behaviour, as a
positive `grad_dot` score does (the influence function is `grad_dot` with the curvature's inverse between).
The factors are fitted on the whole-document loss (`EkfacConfig.fit_loss`), true Fisher (labels sampled from the
model), damping 1e-8 (kronfluence's default; docs/audit.md has the comparison).

kronfluence tracks nn.Linear (and Conv2d) modules only: on the tiny Llama that is every attention and MLP
projection and the (tied) LM head as the head; the embedding's input use and the RMSNorm gains are not covered.

Installed without its dependencies (`scripts/setup`): kronfluence 1.0.1 requires torchvision with no upper
bound, which pip resolves by replacing the pinned torch, and the torchvision that matches torch 2.13 on this
machine does not load against its CPU build; kronfluence never imports torchvision. Its factors are written
as safetensors to a temporary directory; nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import random
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignlab import AlignlabError
from alignlab.audit.attribution import (
    ATTRIBUTION_METHODS,
    AttributionConfig,
    AttributionMethod,
    Example,
    _pad_id,
    _target_weights,
    encode_queries,
    encode_training,
    select_parameters,
)

KRONFLUENCE_VERSION = "1.0.1"
INSTALL = ('pip install -e ".[influence]" && pip install --no-deps "kronfluence==1.0.1" (no-deps: its '
           'torchvision requirement would replace torch; scripts/setup does both)')


def require_kronfluence():
    """The kronfluence module, or a one-line error saying how to install it."""
    try:
        import kronfluence
    except ImportError as err:
        raise AlignlabError(f"attribution method 'ekfac' needs kronfluence {KRONFLUENCE_VERSION} "
                            f"({err.name or 'kronfluence'} is missing): {INSTALL}") from None
    version = getattr(kronfluence, "__version__", "?")
    if version != KRONFLUENCE_VERSION:
        warnings.warn(f"kronfluence {version} is installed; alignlab is tested with {KRONFLUENCE_VERSION}",
                      RuntimeWarning, stacklevel=3)
    return kronfluence


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def _collate(pad_id: int):
    def collate(batch: list[Example]) -> dict:
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (row, _) in enumerate(batch):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        weights = torch.stack([_target_weights(e, width) for e in batch])
        return {"input_ids": ids, "attention_mask": mask, "weights": weights}

    return collate


@contextlib.contextmanager
def _quiet():
    """kronfluence 1.0.1 builds a (disabled) torch.cuda.amp.GradScaler per stage, deprecated in torch 2.13."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*GradScaler", category=FutureWarning)
        yield


def _linear_modules(model: nn.Module, spec: str) -> list[str]:
    """Names of the nn.Linear modules whose weight is among the parameters `spec` selects."""
    chosen = {id(p) for _, p in select_parameters(model, spec)}
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in chosen]
    if not names:
        raise AlignlabError(f"attribution config field 'params'={spec!r} selects no nn.Linear layer for ekfac")
    return names


def _make_task(modules: list[str], seed: int):
    from kronfluence.task import Task

    class LanguageModelTask(Task):
        """Mean next-token loss of each example over its weighted positions (a document's `cfg.loss`, a query's
        completion), summed over the batch as kronfluence expects. With `sample`, targets are drawn from the
        model's own distribution (the true Fisher)."""

        def __init__(self):
            self.generator = torch.Generator().manual_seed(seed)

        def _loss(self, batch, model, sample: bool) -> torch.Tensor:
            ids, w = batch["input_ids"], batch["weights"].to(torch.float32)
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).logits[:, :-1]
            logits = logits.float()
            if sample:
                with torch.no_grad():
                    probs = torch.softmax(logits.detach(), -1).reshape(-1, logits.shape[-1]).cpu()
                    targets = torch.multinomial(probs, 1, generator=self.generator).reshape(w.shape)
                    targets = targets.to(ids.device)
            else:
                targets = ids[:, 1:]
            ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            return ((ce * w).sum(1) / w.sum(1).clamp_min(1.0)).sum()

        def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
            return self._loss(batch, model, sample)

        def compute_measurement(self, batch, model) -> torch.Tensor:
            return self._loss(batch, model, False)

        def get_influence_tracked_modules(self):
            return modules

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    return LanguageModelTask()


class EkfacScorer:
    """EK-FAC factors fitted once on a model and its training documents; each call scores query sets.

    Calling it with a list of query sets scores them all in one pass over the documents (kronfluence computes
    each document's gradient once per call and takes its product with every preconditioned query gradient):
    that pass, one forward and backward per document, is the per-query-set cost; `aggregate` scores one set
    through its summed query gradient (the cheapest way)."""

    def __init__(self, model, tokenizer, documents: Sequence, cfg: AttributionConfig):
        kron = require_kronfluence()
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments
        from kronfluence.utils.dataset import DataLoaderKwargs

        cfg = cfg.check()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.device = next(model.parameters()).device
        modules = _linear_modules(model, cfg.params)
        self.docs = encode_training(tokenizer, documents, cfg)
        fit_cfg = replace(cfg, loss=cfg.ekfac.fit_loss)
        fit_docs = self.docs if fit_cfg.loss == cfg.loss else encode_training(tokenizer, documents, fit_cfg)
        order = list(range(len(fit_docs)))
        random.Random(cfg.seed).shuffle(order)
        if cfg.ekfac.fit_limit:
            order = order[: cfg.ekfac.fit_limit]
        self.n_fit = len(order)
        # kronfluence turns off requires_grad and wraps the Linear modules in place: it works on a copy
        self.task = _make_task(modules, cfg.seed)
        self.model = prepare_model(copy.deepcopy(model).eval(), self.task)
        self._dir = tempfile.TemporaryDirectory(prefix="alignlab-ekfac-")
        logging.getLogger("kronfluence").setLevel(logging.WARNING)
        self.analyzer = Analyzer("alignlab", self.model, self.task, cpu=self.device.type == "cpu",
                                 disable_tqdm=True, output_dir=self._dir.name, log_level=logging.WARNING)
        self.loader_kwargs = DataLoaderKwargs(collate_fn=_collate(_pad_id(tokenizer)))
        with _quiet():
            self.analyzer.fit_all_factors(
                "factors", dataset=_Examples([fit_docs[i] for i in order]), per_device_batch_size=cfg.batch_size,
                factor_args=FactorArguments(strategy=cfg.ekfac.strategy,
                                            use_empirical_fisher=cfg.ekfac.empirical_fisher),
                dataloader_kwargs=self.loader_kwargs, overwrite_output_dir=True)
        self.kronfluence_version = kron.__version__
        # documents sorted by length: batches waste little on padding
        self.order = sorted(range(len(self.docs)), key=lambda i: len(self.docs[i][0]))
        self._calls = 0

    def _scores(self, queries: list[Example], aggregate: bool) -> np.ndarray:
        """[n_queries or 1, n_documents] in the documents' own order."""
        from kronfluence.arguments import ScoreArguments

        self._calls += 1
        name = f"scores{self._calls}"
        with _quiet():
            self.analyzer.compute_pairwise_scores(
                name, factors_name="factors", query_dataset=_Examples(queries),
                train_dataset=_Examples([self.docs[i] for i in self.order]),
                per_device_query_batch_size=len(queries), per_device_train_batch_size=self.cfg.batch_size,
                score_args=ScoreArguments(damping_factor=self.cfg.ekfac.damping,
                                          aggregate_query_gradients=aggregate),
                dataloader_kwargs=self.loader_kwargs, overwrite_output_dir=True)
        sorted_scores = self.analyzer.load_pairwise_scores(name)["all_modules"].double().cpu().numpy()
        out = np.empty_like(sorted_scores)
        out[:, self.order] = sorted_scores
        return out

    def _encode(self, pairs: Sequence[tuple[str, str]]) -> list[Example]:
        return encode_queries(self.tokenizer, pairs, self.cfg.max_len, self.cfg.query_eos)

    def aggregate(self, query_pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Mean influence of each document on one query set's losses (one preconditioned summed gradient)."""
        queries = self._encode(query_pairs)
        return self._scores(queries, aggregate=True)[0] / len(queries)

    def __call__(self, query_sets: Sequence[Sequence[tuple[str, str]]]) -> list[np.ndarray]:
        sizes = [len(q) for q in query_sets]
        if not sizes or min(sizes) == 0:
            raise AlignlabError("attribution needs at least one (prompt, completion) query per set")
        every = self._scores(self._encode([p for q in query_sets for p in q]), aggregate=False)
        bounds = np.cumsum([0, *sizes])
        return [every[a:b].mean(0) for a, b in itertools.pairwise(bounds)]

    def close(self) -> None:
        self._dir.cleanup()

    @property
    def factors_dir(self) -> Path:
        return Path(self._dir.name)


def fit_ekfac(model, tokenizer, documents: Sequence, cfg: AttributionConfig) -> EkfacScorer:
    if len(documents) == 0:
        raise AlignlabError("attribution needs at least one training document")
    return EkfacScorer(model, tokenizer, documents, cfg)


def _ekfac_score(model, tokenizer, documents: Sequence, query_pairs: Sequence[tuple[str, str]],
                 cfg: AttributionConfig) -> np.ndarray:
    scorer = fit_ekfac(model, tokenizer, documents, cfg)
    try:
        return scorer.aggregate(query_pairs)
    finally:
        scorer.close()


ATTRIBUTION_METHODS.register("ekfac", AttributionMethod(
    fit=fit_ekfac, score=_ekfac_score, extra="influence",
    summary="EK-FAC influence function (Grosse et al. 2023) by kronfluence, nn.Linear layers"))
