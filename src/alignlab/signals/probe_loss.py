"""The pathwise probe term: λ · f(probe logit) of the policy's own activations, added to the GRPO loss, with
gradients flowing through the activations (the probe's weights are frozen). Three forms of f (`term`):

- "softplus" (default): softplus(z) = -log(1 - sigmoid(z)), the probe's cross-entropy toward "honest": it
  behaves like the raw logit while the probe fires and flattens once it stops.
- "sigmoid": sigmoid(z), the probe's probability of "hack": bounded, its gradient vanishes far from the
  decision boundary on both sides.
- "logit": z itself, unbounded below; minimising it wrecked the tiny policy (94% malformed samples, KL 60 nats
  after 25 steps at λ=1, measured).

A small `FastGRPOTrainer` subclass. It wraps TRL's private `_compute_loss(model, inputs)` (checked in TRL 1.16,
pinned in pyproject; tests assert the hook point still exists): an ActivationTap with `detach=False` on the
probe's layer captures the training forward pass, and the completion tokens (the last positions of TRL's
forward, or all positions of the shared-prefix forward's completion pass) are selected by
`inputs["completion_mask"]`.
"""

from __future__ import annotations

import torch

from alignlab.models.tap import ActivationTap, aggregate
from alignlab.probes.probe import LinearProbe
from alignlab.train.fast_grpo import FastGRPOTrainer

TERMS = {"softplus": torch.nn.functional.softplus, "sigmoid": torch.sigmoid, "logit": lambda z: z}


class ProbeLossGRPOTrainer(FastGRPOTrainer):
    """`FastGRPOTrainer` (TRL's GRPOTrainer; `fast=False` for TRL's own generation and forward) plus
    λ · f(probe logit) (see the module docstring), everything else as TRL has it.

    Arguments beyond GRPOTrainer's: `probe` (a completion-position LinearProbe; its `metadata["layer"]` is the
    tapped decoder layer, `metadata["aggregation"]` how completion tokens are pooled, default mean),
    `probe_lambda` (λ ≥ 0), `term` ("softplus", "sigmoid" or "logit"). Logged: `probe_logit`, the batch's mean
    probe logit per optimiser step, beside TRL's own keys. The tiny Llama has no dropout, so the captured
    activations are those the policy samples with; a model with dropout sees a noisier probe in training.
    Gradient checkpointing re-runs the forward in the backward and would fire the tap twice: keep it off.
    """

    def __init__(self, *args, probe: LinearProbe, probe_lambda: float = 0.1, term: str = "softplus", **kwargs):
        if term not in TERMS:
            raise ValueError(f"probe loss term must be one of {sorted(TERMS)}, got {term!r}")
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
        # in the autograd graph: [B, prompt + completion, D] from TRL's forward, or [B, C', D] for the C' real
        # completion positions from the shared-prefix forward (the last call the tap saw)
        acts = tap.activations[tap.layers[0]]
        completion_mask = inputs["completion_mask"].bool()
        width = min(acts.shape[1], completion_mask.shape[1])
        acts, completion_mask = acts[:, -width:] if width < acts.shape[1] else acts, completion_mask[:, :width]
        keep = completion_mask.any(-1)  # an empty completion has nothing to pool
        if not keep.any():
            return loss
        feats = aggregate(acts[keep].float(), completion_mask[keep], self.probe_aggregation)
        logits = self.probe.score(feats)
        self.last_probe_logit = float(logits.mean().detach())
        self._metrics["train"]["probe_logit"].append(self.last_probe_logit)
        penalty = TERMS[self.term](logits)
        return loss + self.probe_lambda * penalty.mean().to(loss.dtype)
