"""Harvest at layer L with early exit ÷ a plain HF forward with output_hidden_states=True, same batch.

Both are timed side by side in one run, interleaved, median of repeats, so machine noise cancels in the
ratio. Target from the probes issue: ratio ≤ (L+1)/N + 0.05 for an N-layer model.

    python bench/harvest_early_exit.py [--quick]     (or all benchmarks at once: alignlab bench)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.bench.common import print_result, row
from alignlab.models.tap import ActivationTap


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


@torch.no_grad()
def bench(name: str, config: LlamaConfig, batch: int, seq: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    mask = torch.ones_like(ids)
    n = config.num_hidden_layers
    rows = []
    for layer in sorted({0, n // 2 - 1, n - 1}):
        def full():
            model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)

        tap = ActivationTap(model, [layer], early_exit=True)

        def early(tap=tap):
            tap.run(input_ids=ids, attention_mask=mask)

        with tap:
            full(), early()  # warm-up
            t_full, t_early = [], []
            for _ in range(repeats):  # interleave so drift hits both alike
                t_full += _time(full, 1)
                t_early += _time(early, 1)
        ratio = statistics.median(t_early) / statistics.median(t_full)
        target = (layer + 1) / n + 0.05
        rows.append({"model": name, "layer": layer, "n_layers": n, "ratio": ratio, "target": target,
                     "full_ms": 1000 * statistics.median(t_full), "ok": ratio <= target})
    return rows


CASES = [
    ("organism-size d128 x4", dict(vocab_size=512, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                   num_attention_heads=4), 64, 64),
    ("d512 x8", dict(vocab_size=8192, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                     num_attention_heads=8), 16, 128),
]


def run(quick: bool = False) -> dict:
    repeats = 5 if quick else 15
    rows = [r for name, config, batch, seq in CASES for r in bench(name, LlamaConfig(**config), batch, seq, repeats)]
    return {"name": "harvest at layer L with early exit ÷ full HF forward (target (L+1)/N + 0.05)",
            "rows": [row(f"{r['model']}, layer {r['layer']}", r["ratio"], r["target"],
                         f"full forward {r['full_ms']:.1f} ms") for r in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    print_result(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
