"""Which precision this machine runs natively: bf16 where the hardware has it, fp32 where it would be emulated."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

# CPU flags (Linux /proc/cpuinfo) that mean bf16 matmuls run in hardware: AVX512-BF16 or AMX
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False  # not Linux, or unreadable: assume emulation, which is slow but never wrong
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(f in flags for f in _CPU_BF16_FLAGS)


def bf16_native() -> bool:
    """True on a CUDA GPU with bf16 support, or a CPU with AVX512-BF16/AMX. On an AVX2-only CPU autocast emulates
    bf16: a GRPO step of the default organism took 6.8x as long as in fp32 (14.95 s vs 2.19 s, measured)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bf16' where native, else 'fp32'; 'bf16' and 'fp32' are taken as asked."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_native() else "fp32"
    return precision
