"""Training objectives on HF Trainer (pretraining/SFT) and TRL (RL)."""
