"""Interpretability in the training loop: reward functions and loss terms for TRL's GRPOTrainer."""

from alignlab.signals.probe_loss import ProbeLossGRPOTrainer
from alignlab.signals.rewards import GraderReward, MonitorReward, OracleReward, ProbeReward

__all__ = ["GraderReward", "MonitorReward", "OracleReward", "ProbeLossGRPOTrainer", "ProbeReward"]
