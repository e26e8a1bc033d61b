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

    Arguments beyond GRPOTrainer's (all keyword-only):
      `probe`        a completion-position LinearProbe; `probe.layer` (its `metadata["layer"]`, refused here with
                     a one-line error when missing) is the tapped decoder layer, `metadata["aggregation"]` how
                     the completion's text tokens are pooled (default mean; a sampled EOS is not pooled, as in
                     `ProbeReward` and `harvest`)
      `probe_lambda` λ ≥ 0, the weight of the term in the loss (required: its one default is
                     `signals.arms.ArmParams.probe_lambda`, which the RL runs use)
      `term`         "softplus" (default), "sigmoid" or "logit": f above
      `fast`         FastGRPOTrainer's switch (True: FastRollout and shared-prefix log-probs)
    Logged: `probe_logit`, the batch's mean probe logit per optimiser step (in `trainer.state.log_history`
    beside TRL's own keys); `trainer.last_probe_logit` holds the latest value.
    Dropout: the tap reads the training forward, so a model with dropout sees its probe through dropout noise
    in the loss, but not when it samples; the tiny Llama has none. Gradient checkpointing re-runs the forward in
    the backward and fires the tap a second time: keep it off (`GRPOConfig(gradient_checkpointing=False)`).
    """

    def __init__(self, *args, probe: LinearProbe, probe_lambda: float, term: str = "softplus", **kwargs):
        if term not in TERMS:
            raise ValueError(f"probe loss term must be one of {sorted(TERMS)}, got {term!r}")
        layer = probe.layer  # a probe without a layer is refused before the trainer is built
        super().__init__(*args, **kwargs)
        self.term = term
        self.probe = probe
        self.probe_lambda = probe_lambda
        self.probe_layer = layer
        self.probe_aggregation = probe.aggregation
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
        # the completion's text tokens, as ProbeReward and harvest pool them: a sampled EOS is not one of them
        # (a completion of EOS alone is read at its EOS)
        eos = torch.tensor(list(self.eos_token_ids), device=completion_mask.device)
        text = completion_mask & ~torch.isin(inputs["completion_ids"][:, :width], eos)
        only_eos = ~text.any(-1)
        completion_mask = torch.where(only_eos[:, None], completion_mask, text)
        keep = completion_mask.any(-1)  # an empty completion has nothing to pool
        if not keep.any():
            return loss
        feats = aggregate(acts[keep].float(), completion_mask[keep], self.probe_aggregation)
        logits = self.probe.score(feats)
        self.last_probe_logit = float(logits.mean().detach())
        self._metrics["train"]["probe_logit"].append(self.last_probe_logit)
        penalty = TERMS[self.term](logits)
        return loss + self.probe_lambda * penalty.mean().to(loss.dtype)
