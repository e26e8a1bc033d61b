"""The pathwise probe term: λ · probe logit of the policy's own activations, added to the GRPO loss, with
gradients flowing through the activations (the probe's weights are frozen).

A small `GRPOTrainer` subclass. It wraps TRL's private `_compute_loss(model, inputs)` (checked in TRL 1.16,
pinned in pyproject; tests assert the hook point still exists): an ActivationTap with `detach=False` on the
probe's layer captures the training forward pass, and the completion tokens are the last
`completion_ids.size(1)` positions of the sequence, selected by `inputs["completion_mask"]`.
"""

from __future__ import annotations

from trl import GRPOTrainer

from alignlab.models.tap import ActivationTap, aggregate
from alignlab.probes.probe import LinearProbe


class ProbeLossGRPOTrainer(GRPOTrainer):
    def __init__(self, *args, probe: LinearProbe, probe_lambda: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
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
        return loss + self.probe_lambda * logits.mean().to(loss.dtype)
