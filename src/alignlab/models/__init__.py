"""Build the tiny default model, load any HF causal LM, save/load safetensors checkpoints."""

from alignlab.models.io import load_model, save_model
from alignlab.models.tap import own_forward
from alignlab.models.tiny import TinyModelConfig, build_tiny_model, build_tokenizer

__all__ = ["TinyModelConfig", "build_tiny_model", "build_tokenizer", "load_model", "own_forward", "save_model"]
