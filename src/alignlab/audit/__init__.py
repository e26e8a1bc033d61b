"""Audit instruments: sparse autoencoders, feature search, steering, data attribution and the blind auditing game."""
