"""Linear probes on residual-stream features: harvest, fit, calibrate, evaluate, save/load."""

from alignlab.probes.harvest import Features, harvest, iter_features, load_harvest
from alignlab.probes.metrics import (
    accuracy_at_threshold,
    auroc,
    probe_report,
    random_direction_control,
    recall_at_fpr,
    threshold_at_fpr,
)
from alignlab.probes.probe import PROBE_FITTERS, LinearProbe, fit_diff_of_means, fit_logistic, fit_probe
from alignlab.probes.sweep import layer_sweep, plot_layer_sweep

__all__ = [
    "PROBE_FITTERS",
    "Features",
    "LinearProbe",
    "accuracy_at_threshold",
    "auroc",
    "fit_diff_of_means",
    "fit_logistic",
    "fit_probe",
    "harvest",
    "iter_features",
    "layer_sweep",
    "load_harvest",
    "plot_layer_sweep",
    "probe_report",
    "random_direction_control",
    "recall_at_fpr",
    "threshold_at_fpr",
]
