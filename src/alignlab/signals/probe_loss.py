"""The pathwise probe term: λ · softplus(probe logit) of the policy's own activations, added to the GRPO loss,
with gradients flowing through the activations (the probe's weights are frozen).

softplus(z) = -log(1 - sigmoid(z)) is the probe's cross-entropy toward "honest": it behaves like the raw logit
while the probe fires and flattens once it stops. The raw logit is unbounded below, and minimising it wrecked
the tiny policy (94% malformed samples, KL 60 nats after 25 steps at λ=1, measured); `term="logit"` keeps it.

A small `GRPOTrainer` subclass. It wraps TRL's private `_compute_loss(model, inputs)` (checked in TRL 1.16,
pinned in pyproject; tests assert the hook point still exists): an ActivationTap with `detach=False` on the
probe's layer captures the training forward pass, and the completion tokens are the last
`completion_ids.size(1)` positions of the sequence, selected by `inputs["completion_mask"]`.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer

from alignlab.models.tap import ActivationTap, aggregate
from alignlab.probes.probe import LinearProbe


class ProbeLossGRPOTrainer(GRPOTrainer):
    def __init__(self, *args, probe: LinearProbe, probe_lambda: float = 0.1, term: str = "softplus", **kwargs):
        if term not in ("softplus", "logit"):
            raise ValueError(f"probe loss term must be softplus or logit, got {term!r}")
        super().__init__(*args, **kwargs)
        self.term = term
        self.probe = probe
        self.probe_lambda = probe_lambda
        self.probe_layer = int(probe.metadata["layer"])
        self.probe_aggregation = probe.metadata.get("aggregation", "mean")
        self.last_probe_logit = float("nan")

    def _compute_loss(self, model, inputs):
        with ActivationTap(model, [self.probe_layer], detach=False) as tap:
            loss = super()._compute_loss(model, inputs)
        acts = tap.activations[tap.layers[0]]  # [B, prompt + completion, D], in the autograd graph
        completion_mask = inputs["completion_mask"].bool()
        acts = acts[:, -completion_mask.shape[1] :]
        keep = completion_mask.any(-1)  # an empty completion has nothing to pool
        if not keep.any():
            return loss
        feats = aggregate(acts[keep].float(), completion_mask[keep], self.probe_aggregation)
        logits = self.probe.score(feats)
        self.last_probe_logit = float(logits.mean().detach())
        self._metrics["train"]["probe_logit"].append(self.last_probe_logit)
        penalty = torch.nn.functional.softplus(logits) if self.term == "softplus" else logits
        return loss + self.probe_lambda * penalty.mean().to(loss.dtype)
