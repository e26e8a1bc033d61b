"""Pretraining with feedback (Korbak et al. 2023) and harm tags (Maini et al. 2025) as HF `Trainer` losses.

Data are documents made of scored segments (a line of code, a task completion): the score is the segment's
misalignment, higher is worse, and a segment is *bad* when it exceeds `ObjectiveConfig.threshold`.

    mle           plain likelihood (the baseline)
    filter        likelihood on the documents that survive a score filter (data-level)
    conditional   a control token before every segment (<|good|> / <|bad|>); generation asks for <|good|>
    unlikelihood  likelihood on good segments, -α·log(1 - p) on tokens of bad segments
    rwr           reward-weighted regression: each token's loss weighted by exp(-score / β)
    awr           advantage-weighted regression: weight exp((R - V) / β) with a learnt value head V
    tags          likelihood on text where a <|harm|> tag sits at random positions inside bad segments
    repair        likelihood on documents whose bad segments were rewritten by the environment (data-level)

Documents are packed into fixed-length blocks (no padding), each token carrying its segment's score and
whether it is text (not a control token or tag), so every objective sees the same token budget.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from alignlab import AlignlabError
from alignlab.config import check_rules, doc
from alignlab.registry import Registry
from alignlab.train.lm import LMTrainConfig, describe, quiet_trainer, training_args

GOOD, BAD, HARM = "<|good|>", "<|bad|>", "<|harm|>"
CONTROL_TOKENS = (GOOD, BAD, HARM)

ScoredDoc = list[tuple[str, float]]  # (segment text, score)
TokenDoc = list[tuple[list[int], float]]  # (segment token ids, score)


@dataclass(frozen=True)
class ObjectiveConfig:
    """Hyper-parameters of every objective; each study sets task-appropriate defaults (see docs)."""

    threshold: float = doc("a segment is bad when its score exceeds this", 0.0)
    filter_drop: float = doc("filter: drop documents above this quantile of document scores (and above "
                             "threshold)", 0.25)
    untagged_fraction: float = doc("conditional: segments left without a control token (Korbak et al.: 1%)", 0.01)
    ul_alpha: float = doc("unlikelihood: weight of -log(1 - p) on bad tokens", 1.0)
    rwr_beta: float = doc("rwr: temperature of exp(-score / beta)", 1.0)
    awr_beta: float = doc("awr: temperature of exp((R - V) / beta)", 1.0)
    awr_alpha: float = doc("awr: weight of the value head's squared error", 0.5)
    awr_max_weight: float = doc("awr: clip on the advantage weight, for stability", 20.0)
    tags_per_bad_segment: int = doc("tags: <|harm|> tokens inserted into each bad segment", 1)

    def check(self) -> ObjectiveConfig:
        rules = [
            ("filter_drop", 0 <= self.filter_drop < 1, "must be in [0, 1)"),
            ("untagged_fraction", 0 <= self.untagged_fraction <= 1, "must be in [0, 1]"),
            ("ul_alpha", self.ul_alpha >= 0, "must be >= 0"),
            ("rwr_beta", self.rwr_beta > 0, "must be > 0"),
            ("awr_beta", self.awr_beta > 0, "must be > 0"),
            ("awr_alpha", self.awr_alpha >= 0, "must be >= 0"),
            ("awr_max_weight", self.awr_max_weight >= 1, "must be >= 1"),
            ("tags_per_bad_segment", self.tags_per_bad_segment >= 1, "must be >= 1"),
        ]
        return check_rules(self, "objective", rules)


@dataclass(frozen=True)
class PretrainConfig:
    """A run is a token budget over all processes: steps = tokens / (batch_size · block_len · processes), with
    `batch_size` per process; the data are repeated as needed."""

    tokens: int = doc("token budget over all processes (steps = tokens / (batch_size x block_len x processes))",
                      800_000)
    block_len: int = doc("tokens per packed block", 256)
    batch_size: int = doc("blocks per step per process; tiny models at this budget are step-bound (4 beat 8 and "
                          "16)", 4)
    learning_rate: float = doc("peak learning rate (cosine)", 2e-3)
    warmup_ratio: float = doc("share of steps warming up", 0.03)
    weight_decay: float = doc("AdamW weight decay", 0.01)

    @property
    def steps(self) -> int:
        return self.steps_for(1)

    def steps_for(self, processes: int) -> int:
        return max(1, math.ceil(self.tokens / (self.batch_size * self.block_len * processes)))


def check_objective(name: str) -> str:
    OBJECTIVES[name]  # a one-line error naming the registered objectives
    return name


def tokenize_docs(tokenizer, docs: list[ScoredDoc]) -> list[TokenDoc]:
    """Each segment tokenised on its own, so control tokens and tags can go between segments."""
    flat = [text for d in docs for text, _ in d]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, i = [], 0
    for d in docs:
        out.append([(ids[i + j], score) for j, (_, score) in enumerate(d)])
        i += len(d)
    return out


def doc_score(doc: TokenDoc) -> float:
    """Token-weighted mean segment score (the caller's documents define what a score means)."""
    n = sum(len(ids) for ids, _ in doc)
    return sum(len(ids) * s for ids, s in doc) / max(n, 1)


def filter_docs(docs: list[TokenDoc], cfg: ObjectiveConfig) -> list[TokenDoc]:
    scores = np.array([doc_score(d) for d in docs])
    cut = max(cfg.threshold, float(np.quantile(scores, 1 - cfg.filter_drop))) if len(docs) else cfg.threshold
    return [d for d, s in zip(docs, scores, strict=True) if s <= cut]


def control_ids(tokenizer) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in CONTROL_TOKENS}
    if any(i is None or i == tokenizer.unk_token_id for i in ids.values()):
        raise AlignlabError(f"tokenizer lacks the control tokens {list(CONTROL_TOKENS)}: build it with them")
    return ids


def encode_doc(doc: TokenDoc, objective: str, cfg: ObjectiveConfig, special: dict[str, int], eos: int,
               rng: random.Random, condition_good: bool = False):
    """(ids, scores, is_text) for one document, ending with EOS. `condition_good`: for evaluation, every
    segment of a conditional model gets <|good|>, none untagged."""
    spec = OBJECTIVES[objective]
    ids, scores, text = [], [], []
    for seg, score in doc:
        bad = score > cfg.threshold
        if spec.control_tokens and (condition_good or rng.random() >= cfg.untagged_fraction):
            ids.append(special[GOOD if condition_good or not bad else BAD])
            scores.append(score)
            text.append(False)
        seg_ids, seg_text = list(seg), [True] * len(seg)
        if spec.harm_tags and bad and not condition_good and seg_ids:
            for _ in range(cfg.tags_per_bad_segment):
                k = rng.randrange(len(seg_ids))
                seg_ids.insert(k, special[HARM])
                seg_text.insert(k, False)
        ids += seg_ids
        scores += [score] * len(seg_ids)
        text += seg_text
    return [*ids, eos], [*scores, 0.0], [*text, True]


class PackedBlocks(torch.utils.data.Dataset):
    """The encoded documents concatenated and cut into equal blocks (the remainder is dropped)."""

    def __init__(self, encoded: list[tuple[list[int], list[float], list[bool]]], block_len: int):
        ids = np.fromiter((i for e in encoded for i in e[0]), dtype=np.int64)
        scores = np.fromiter((s for e in encoded for s in e[1]), dtype=np.float32)
        text = np.fromiter((t for e in encoded for t in e[2]), dtype=bool)
        n = len(ids) // block_len
        if n == 0:
            raise AlignlabError(f"too little data for one block of {block_len} tokens ({len(ids)} tokens)")
        cut = n * block_len
        self.ids = torch.from_numpy(ids[:cut].reshape(n, block_len))
        self.scores = torch.from_numpy(scores[:cut].reshape(n, block_len))
        self.text = torch.from_numpy(text[:cut].reshape(n, block_len))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "scores": self.scores[i], "is_text": self.text[i]}

    @property
    def n_tokens(self) -> int:
        return self.ids.numel()


def encode_corpus(docs: list[TokenDoc], objective: str, cfg: ObjectiveConfig, tokenizer, block_len: int,
                  seed: int, condition_good: bool = False) -> PackedBlocks:
    rng = random.Random(seed)
    special, eos = control_ids(tokenizer), tokenizer.eos_token_id
    if OBJECTIVES[objective].keep is not None and not condition_good:
        docs = OBJECTIVES[objective].keep(docs, cfg)
    order = list(range(len(docs)))
    rng.shuffle(order)  # documents in a seeded order, so blocks mix files/tasks
    encoded = [encode_doc(docs[i], objective, cfg, special, eos, rng, condition_good) for i in order]
    return PackedBlocks(encoded, block_len)


def token_losses(model, ids: torch.Tensor, value_head=None):
    """Per-token NLL of ids[:, 1:] (and the value head's predictions, when given)."""
    out = model(input_ids=ids, output_hidden_states=value_head is not None)
    logits = out.logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    values = value_head(out.hidden_states[-1][:, :-1].float()).squeeze(-1) if value_head is not None else None
    return nll.view(ids.shape[0], -1), values


def mle_loss(nll: torch.Tensor, scores: torch.Tensor, values, cfg: ObjectiveConfig):
    return nll.mean()


def unlikelihood_loss(nll: torch.Tensor, scores: torch.Tensor, values, cfg: ObjectiveConfig):
    bad = scores > cfg.threshold
    p = torch.exp(-nll).clamp(max=1 - 1e-6)
    unlikely = -torch.log1p(-p)
    return torch.where(bad, cfg.ul_alpha * unlikely, nll).mean()


def rwr_loss(nll: torch.Tensor, scores: torch.Tensor, values, cfg: ObjectiveConfig):
    return (torch.exp(-scores / cfg.rwr_beta) * nll).mean()


def awr_loss(nll: torch.Tensor, scores: torch.Tensor, values, cfg: ObjectiveConfig):
    reward = -scores
    weight = torch.exp((reward - values.detach()) / cfg.awr_beta).clamp(max=cfg.awr_max_weight)
    return (weight * nll).mean() + cfg.awr_alpha * ((values - reward) ** 2).mean()


@dataclass(frozen=True)
class Objective:
    """One pretraining objective, all of it in one place: its loss on per-token NLL and segment scores, what it
    does to the data (`keep` drops documents, `corpus` "repair" trains on the world's repaired documents), to
    the token stream (a control token before each segment, harm tags inside bad ones), and whether it trains a
    value head (AWR). Register a new one in `OBJECTIVES` (docs/extending.md)."""

    loss: Callable = mle_loss  # (nll [B, T], scores [B, T], values [B, T] or None, ObjectiveConfig) -> scalar
    keep: Callable | None = None  # (token docs, ObjectiveConfig) -> the documents trained on
    corpus: str = "train"  # "train" or "repair"
    control_tokens: bool = False  # <|good|>/<|bad|> before segments; generation asks for <|good|>
    harm_tags: bool = False  # <|harm|> inside bad segments; measured with tag-aware safe decoding too
    value_head: bool = False  # a linear value head on the last hidden state, trained beside the model
    finetunable: bool = False  # also run as fine-tuning after MLE in the safety-pretraining study


OBJECTIVES: Registry[Objective] = Registry("objective")
OBJECTIVES.register("mle", Objective())
OBJECTIVES.register("filter", Objective(keep=filter_docs, finetunable=True))
OBJECTIVES.register("conditional", Objective(control_tokens=True, finetunable=True))
OBJECTIVES.register("unlikelihood", Objective(loss=unlikelihood_loss, finetunable=True))
OBJECTIVES.register("rwr", Objective(loss=rwr_loss, finetunable=True))
OBJECTIVES.register("awr", Objective(loss=awr_loss, value_head=True, finetunable=True))
OBJECTIVES.register("tags", Objective(harm_tags=True))
OBJECTIVES.register("repair", Objective(corpus="repair"))


def objective_loss(nll: torch.Tensor, scores: torch.Tensor, values, objective: str, cfg: ObjectiveConfig):
    """The objective's loss from per-token NLL and the scores of the predicted tokens."""
    return OBJECTIVES[objective].loss(nll, scores, values, cfg)


class ObjectiveTrainer(Trainer):
    """HF Trainer whose loss is one of the objectives; AWR's value head is a submodule of the model for the
    duration of training, so the optimizer, accelerate and DeepSpeed see it like any other parameter."""

    def __init__(self, *args, objective: str, objective_cfg: ObjectiveConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective, self.objective_cfg = OBJECTIVES[objective], objective_cfg

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        head = getattr(self.accelerator.unwrap_model(model), "alignlab_value_head", None)
        nll, values = token_losses(model, inputs["input_ids"], head if self.objective.value_head else None)
        loss = self.objective.loss(nll, inputs["scores"][:, 1:], values, self.objective_cfg)
        return (loss, None) if return_outputs else loss


class _EveryFraction(TrainerCallback):
    """Calls `fn(model, step)` at the given steps; the time it takes is kept out of the throughput."""

    def __init__(self, steps: set[int], fn):
        self.steps, self.fn, self.seconds = steps, fn, 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            start = time.time()
            model.eval()
            self.fn(model, state.global_step)
            model.train()
            self.seconds += time.time() - start


def pretrain(model, tokenizer, docs: list[TokenDoc], objective: str, cfg: PretrainConfig,
             objective_cfg: ObjectiveConfig, seed: int, checkpoint_steps: tuple[int, ...] = (),
             on_checkpoint=None) -> dict:
    """Train `model` in place on `docs` with `objective` for `cfg.tokens` tokens. Returns throughput and losses;
    `on_checkpoint(model, step)` runs at `checkpoint_steps` (untimed)."""
    objective_cfg.check()
    data = encode_corpus(docs, objective, objective_cfg, tokenizer, cfg.block_len, seed)
    if OBJECTIVES[objective].value_head:
        model.add_module("alignlab_value_head", torch.nn.Linear(model.config.hidden_size, 1))
    callback = _EveryFraction(set(checkpoint_steps), on_checkpoint) if on_checkpoint else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            args = training_args_for(cfg, tmp, seed)
            trainer = ObjectiveTrainer(model=model, args=args, train_dataset=data, objective=objective,
                                       objective_cfg=objective_cfg, callbacks=[callback] if callback else None)
            quiet_trainer(trainer, describe(model, f"pretraining ({objective})") + f" on {cfg.tokens:,} tokens")
            out = trainer.train()
    finally:
        if hasattr(model, "alignlab_value_head"):
            del model.alignlab_value_head
    model.eval()
    seconds = out.metrics["train_runtime"] - (callback.seconds if callback else 0.0)
    tokens = trainer.state.global_step * cfg.batch_size * cfg.block_len * trainer.args.world_size
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens": tokens, "train_seconds": seconds, "tokens_per_second": tokens / max(seconds, 1e-9),
            "final_loss": losses[-1] if losses else out.training_loss, "data_tokens": data.n_tokens}


def training_args_for(cfg: PretrainConfig, out_dir: str, seed: int):
    base = LMTrainConfig(learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, warmup_ratio=cfg.warmup_ratio,
                         weight_decay=cfg.weight_decay, max_len=cfg.block_len, seed=seed)
    steps = cfg.steps_for(int(os.environ.get("WORLD_SIZE", "1")))  # set by accelerate / torchrun launchers
    return training_args(base, out_dir, max_steps=steps, remove_unused_columns=False,
                         logging_steps=max(1, steps // 20))


def encode_eval_docs(docs: list[TokenDoc], objective: str, cfg: ObjectiveConfig, tokenizer, max_len: int):
    """Documents for held-out loss and KL: each after an EOS (as in packed training, so the first text token is
    predicted too), conditioned on <|good|> for a conditional model, and cut to whole segments that fit
    `max_len` even with a control token per segment, so every model scores the same text tokens. One entry per
    document, in order (a document whose first segment does not fit scores no tokens)."""
    special, eos = control_ids(tokenizer), tokenizer.eos_token_id
    rng = random.Random(0)
    out = []
    for document in docs:
        kept, used = [], 2
        for seg, score in document:
            if used + len(seg) + 1 > max_len:
                break
            kept.append((seg, score))
            used += len(seg) + 1
        ids, _, text = encode_doc(kept, objective, cfg, special, eos, rng, condition_good=True)
        out.append(([eos, *ids[:-1]], [False, *text[:-1]]))
    return out


@torch.no_grad()
def doc_logprobs(model, encoded: list[tuple[list[int], list[bool]]], pad_id: int, batch_size: int = 32):
    """(sum of text-token log-probabilities, number of text tokens) per document."""
    model.eval()
    sums, counts = [], []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        text = torch.zeros((len(batch), width), dtype=torch.bool)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (i, t) in enumerate(batch):
            ids[row, :len(i)], text[row, :len(t)], mask[row, :len(i)] = torch.tensor(i), torch.tensor(t), 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        keep = text[:, 1:]
        sums.append((lp * keep).sum(1))
        counts.append(keep.sum(1))
    return torch.cat(sums), torch.cat(counts)
