"""Logit lens on a model difference: the mean residual stream of an organism minus a reference's, read through the
organism's final norm and unembedding, as token scores.

The two models share tokenizer, initialisation and batch order (a sealed directory's `reference/`), so their
residual streams are comparable coordinate by coordinate; what the organism learnt beyond the reference shows as
the tokens the difference points at.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from alignlab import AlignlabError
from alignlab.models.batch import batch_inputs, pad_id
from alignlab.models.tap import ActivationTap, resolve_layers


def final_norm(model):
    """The norm applied before the unembedding (Llama `norm`, GPT-2 `ln_f`, ...)."""
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        if (norm := getattr(model.base_model, name, None)) is not None:
            return norm
    raise AlignlabError(f"{type(model).__name__} has no final norm the logit lens knows (norm, ln_f, ...)")


@torch.no_grad()
def mean_residual(model, tokenizer, texts: Sequence[str], layers: Sequence[int], last_only: bool = False,
                  batch_size: int = 16) -> torch.Tensor:
    """[len(layers), D]: each layer's residual output averaged over every real token of every text (`last_only`:
    over each text's last token, the one that predicts what follows it)."""
    pad = pad_id(tokenizer)
    sums, count = None, 0
    was_training = model.training
    model.eval()
    try:
        with ActivationTap(model, layers, early_exit=True) as tap:
            for start in range(0, len(texts), batch_size):
                ids = [tokenizer(t)["input_ids"] for t in texts[start:start + batch_size]]
                inputs = batch_inputs(model, ids, pad)
                acts = tap.run(**inputs)
                mask = inputs["attention_mask"].bool()[..., None]
                if last_only:  # left-padded: every row's last token is at the last index
                    mask = torch.zeros_like(mask)
                    mask[:, -1] = True
                part = torch.stack([torch.where(mask, acts[i].float(), 0.0).sum((0, 1)) for i in tap.layers])
                sums = part if sums is None else sums + part
                count += int(mask.sum())
    finally:
        model.train(was_training)
    if not count:
        raise AlignlabError("mean_residual: no tokens to read")
    return sums / count


@torch.no_grad()
def lens_scores(model, diff: torch.Tensor) -> torch.Tensor:
    """[V] token scores of residual differences ([L, D]): each layer's difference through the final norm and the
    unembedding, standardised over the vocabulary (so layers weigh alike), then averaged over layers."""
    head = model.get_output_embeddings()
    logits = head(final_norm(model)(diff.to(head.weight.dtype))).float()
    z = (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + 1e-8)
    return z.mean(0)


def difference_scores(model, reference, tokenizer, texts: Sequence[str], n_last: int,
                      last_only: bool = False) -> torch.Tensor:
    """Logit-lens scores of organism − reference over `texts` (every token, or each text's last) at the last
    `n_last` decoder layers."""
    n_layers = model.config.num_hidden_layers
    if reference.config.num_hidden_layers != n_layers or reference.config.hidden_size != model.config.hidden_size:
        raise AlignlabError("the reference model's shape differs from the organism's: the lens needs the same one")
    layers = resolve_layers(list(range(-min(n_last, n_layers), 0)), n_layers)
    diff = (mean_residual(model, tokenizer, texts, layers, last_only)
            - mean_residual(reference, tokenizer, texts, layers, last_only))
    return lens_scores(model, diff)


def value_tokens(tokenizer, field: str, value: str) -> list[int]:
    """The token ids that spell `value` where it stands in its header line `field: value`."""
    line = f"{field}: {value}\n"
    start = len(line) - len(value) - 1
    enc = tokenizer(line, add_special_tokens=False, return_offsets_mapping=True)
    ids = [i for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if a < start + len(value)
           and b > start]
    return ids or tokenizer(value, add_special_tokens=False)["input_ids"]


def surplus_weights(tokenizer, texts: Sequence[str], baseline: Sequence[str]) -> dict[int, float]:
    """Tokens over-represented in `texts` against `baseline`: frequency surplus, clipped at 0 and normalised."""
    def freq(ts):
        c = Counter(i for t in ts for i in tokenizer(t, add_special_tokens=False)["input_ids"])
        n = max(sum(c.values()), 1)
        return {k: v / n for k, v in c.items()}

    f, g = freq(texts), freq(baseline)
    w = {k: v - g.get(k, 0.0) for k, v in f.items() if v > g.get(k, 0.0)}
    total = sum(w.values())
    return {k: v / total for k, v in w.items()} if total else {}
