"""Harvest at layer L with early exit ÷ a plain HF forward with output_hidden_states=True, same batch.

Both are timed side by side in one run, interleaved, median of repeats, so machine noise cancels in the
ratio. Target from the probes issue: ratio ≤ (L+1)/N + 0.05 for an N-layer model.

    .venv/bin/python bench/harvest_early_exit.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 5 if args.quick else 15
    cases = [
        ("organism-size d128 x4", LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=512,
                                               num_hidden_layers=4, num_attention_heads=4), 64, 64),
        ("d512 x8", LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=2048,
                                num_hidden_layers=8, num_attention_heads=8), 16, 128),
    ]
    print(f"{'model':24} {'layer':>5} {'full ms':>8} {'ratio':>6} {'target':>7}  ok")
    for name, config, batch, seq in cases:
        for r in bench(name, config, batch, seq, repeats):
            print(f"{r['model']:24} {r['layer']:>5} {r['full_ms']:>8.1f} {r['ratio']:>6.3f} {r['target']:>7.3f}  "
                  f"{'yes' if r['ok'] else 'NO'}")


if __name__ == "__main__":
    main()
