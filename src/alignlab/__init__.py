"""alignlab: alignment experiments on model organisms with known ground truth.

The notebook path, flat (docs/api.md has a short example for each):

    from alignlab import build_organism, load_organism, harvest, fit_probe, LinearProbe, ProbeReward
    from alignlab import ProbeLossGRPOTrainer, fit_sae, steer, attribute, run_study

Names are imported on first use, so `import alignlab` stays cheap (the CLI imports it for its error type).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"


class AlignlabError(Exception):
    """A user-facing error: the CLI prints its one-line message and exits with code 2."""


# name -> module that defines it
_EXPORTS = {
    # organisms
    "ORGANISMS": "alignlab.organisms",
    "build_organism": "alignlab.organisms",
    "load_organism": "alignlab.organisms",
    # models
    "load_model": "alignlab.models",
    "own_forward": "alignlab.models",
    "ActivationTap": "alignlab.models.tap",
    "sample": "alignlab.models.sampling",
    # probes
    "PROBE_FITTERS": "alignlab.probes",
    "LinearProbe": "alignlab.probes",
    "fit_probe": "alignlab.probes",
    "fit_logistic": "alignlab.probes",
    "harvest": "alignlab.probes",
    "auroc": "alignlab.probes",
    # RL signals and arms
    "GraderReward": "alignlab.signals",
    "ProbeReward": "alignlab.signals",
    "ProbeLossGRPOTrainer": "alignlab.signals",
    "RL_ARMS": "alignlab.signals.arms",
    "ArmSetup": "alignlab.signals.arms",
    "train_grpo": "alignlab.train.grpo",
    "GRPORunConfig": "alignlab.train.grpo",
    "ForcedRollout": "alignlab.train.forced",
    "OBJECTIVES": "alignlab.train.objectives",
    # audit instruments
    "SAEConfig": "alignlab.audit.sae",
    "fit_sae": "alignlab.audit.sae",
    "load_sae": "alignlab.audit.sae",
    "steer": "alignlab.audit.steering",
    "steering_curve": "alignlab.audit.steering",
    "AttributionConfig": "alignlab.audit.attribution",
    "attribute": "alignlab.audit.attribution",
    "AUDITORS": "alignlab.audit.auditors",
    # studies
    "STUDIES": "alignlab.studies",
    "run_study": "alignlab.studies",
    "load_results": "alignlab.studies",
}

__all__ = ["AlignlabError", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'alignlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
