"""Per-token probe scores: the probe's direction applied to each completion token's activation at its layer.

For a probe fitted on the mean over completion tokens, the mean of these scores is the completion's own score
(the probe is affine), so a page can colour tokens and still agree with the completion-level verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignlab.models.batch import batch_inputs, pad_id
from alignlab.models.tap import ActivationTap


@torch.no_grad()
def token_scores(model, tokenizer, probe, pairs: Sequence[tuple[str, str]], layer: int | None = None,
                 batch_size: int = 64, also=None) -> list[list[tuple]]:
    """(token text, score) for every completion token of each (prompt, completion); [] for an empty one.
    With `also` (a function of one completion's [T, D] activations returning T values) each tuple gains its
    value, e.g. the SAE feature most active at that token."""
    layer = probe.layer if layer is None else layer
    was_training = model.training
    model.eval()
    out: list[list[tuple[str, float]]] = []
    try:
        with ActivationTap(model, [layer], early_exit=True) as tap:
            for i in range(0, len(pairs), batch_size):
                batch = pairs[i : i + batch_size]
                p_ids = [tokenizer(p)["input_ids"] for p, _ in batch]
                c_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for _, c in batch]
                inputs = batch_inputs(model, [p + c for p, c in zip(p_ids, c_ids, strict=True)], pad_id(tokenizer))
                acts = tap.run(**inputs)[tap.layers[0]]
                for row, c in enumerate(c_ids):
                    if not c:
                        out.append([])
                        continue
                    a = acts[row, -len(c):].float()
                    cols = [[tokenizer.decode([t]) for t in c], probe.score(a).tolist()]
                    out.append(list(zip(*cols, *([also(a)] if also else []), strict=True)))
    finally:
        model.train(was_training)
    return out
