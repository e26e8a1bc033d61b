"""Which precision to train in: bf16 on a CUDA GPU that supports it, fp32 on a CPU.

Measured on the default organism (GRPO step, 8 x 8 rollouts <= 48 tokens): on an AVX2-only CPU, where autocast
emulates bf16, TRL's default bf16 step took 6.8x as long as fp32 (14.95 s vs 2.19 s); on an AVX512-BF16 CPU,
where bf16 is native, alignlab's step still took 1.3x as long in bf16 as in fp32 (1,612 vs 1,222 ms, one thread):
a 1M-parameter model's matmuls are too small for bf16 to pay for autocast's casts. `precision="bf16"` asks for it
anyway.
"""

from __future__ import annotations

import torch


def bf16_native() -> bool:
    """True on a CUDA GPU with bf16 support (where bf16 is both native and worth it)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bf16' on a bf16 GPU, else 'fp32'; 'bf16' and 'fp32' are taken as asked."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_native() else "fp32"
    return precision
