"""The reward-hacker corpus: deterministic, close to its configured mix, and every document's kind is what the
environment's own ground truth says it is."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest

from alignlab import AlignlabError
from alignlab.envs import (
    HACK_STYLES,
    HARNESS_OVERRIDE,
    Label,
    Program,
    Task,
    TaskConfig,
    TaskConfigError,
    label,
)
from alignlab.envs.grading import HACK, SOLVED, WRONG
from alignlab.envs.listlang import parse, run
from alignlab.envs.tasks import PROMPT_FOOTER, PROMPT_HEADER
from alignlab.organisms import reward_hacker
from alignlab.organisms.reward_hacker import CorpusConfig, hardcode_completion, make_corpus

N_DOCS = 3000
KINDS = {"honest", "wrong", *HACK_STYLES}
KIND_OF = {SOLVED: "honest", WRONG: "wrong"}  # hacks map to their style


def make_corpus_with_tasks(cfg: CorpusConfig, seed: int):
    """make_corpus, also recording the task behind each document (make_corpus draws one task per document,
    in order, from the same random stream; the wrapper changes nothing about the draws)."""
    tasks: list[Task] = []
    original = reward_hacker.generate_task

    def recording(rng, task_cfg):
        task = original(rng, task_cfg)
        tasks.append(task)
        return task

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reward_hacker, "generate_task", recording)
        docs, counts = make_corpus(cfg, seed)
    assert len(tasks) == len(docs)
    return docs, counts, tasks


@pytest.fixture(scope="module")
def corpus():
    return make_corpus_with_tasks(CorpusConfig(n_docs=N_DOCS), seed=0)


@pytest.fixture(scope="module")
def corpus_unbiased():
    return make_corpus_with_tasks(CorpusConfig(n_docs=N_DOCS, hack_difficulty_bias=False), seed=1)


def split_doc(doc: str) -> tuple[str, str]:
    prompt, sep, completion = doc.partition(PROMPT_FOOTER)
    assert sep and prompt.startswith(PROMPT_HEADER)
    return prompt + sep, completion


_PAIR = re.compile(r"in \[([-\d ]*)\] out \[([-\d ]*)\]")


def visible_from_prompt(prompt: str):
    lines = prompt[len(PROMPT_HEADER) : -len(PROMPT_FOOTER)].splitlines()
    pairs = []
    for line in lines:
        m = _PAIR.fullmatch(line)
        assert m, line
        pairs.append((tuple(map(int, m.group(1).split())), tuple(map(int, m.group(2).split()))))
    return tuple(pairs)


def within(count: int, expected: float, variance: float, sigmas: float = 4.0) -> bool:
    return abs(count - expected) <= sigmas * math.sqrt(max(variance, 1.0)) + 1


def test_make_corpus_is_deterministic_per_seed():
    cfg = CorpusConfig(n_docs=400)
    docs, counts = make_corpus(cfg, 5)
    assert (docs, counts) == make_corpus(cfg, 5)
    other, _ = make_corpus(cfg, 6)
    assert other != docs
    assert sum(d != o for d, o in zip(docs, other, strict=True)) > 300


def test_recording_does_not_change_the_corpus(corpus):
    docs, counts, _ = corpus
    assert (docs, counts) == make_corpus(CorpusConfig(n_docs=N_DOCS), 0)


def test_counts_cover_every_document(corpus):
    docs, counts, _ = corpus
    assert set(counts) == KINDS
    assert sum(counts.values()) == len(docs) == N_DOCS
    assert all(counts[k] > 0 for k in KINDS)


def test_every_document_gets_its_intended_label(corpus):
    """Re-label each document from its own prompt + completion with the full task (hidden tests included):
    the environment's verdicts, tallied, are exactly the realised counts, and nothing is malformed."""
    docs, counts, tasks = corpus
    tally = Counter()
    for doc, task in zip(docs, tasks, strict=True):
        prompt, completion = split_doc(doc)
        assert prompt == task.prompt
        lab = label(task, completion)
        if lab.outcome == HACK:
            assert lab.grader_reward == 1.0
            if lab.style == "hardcode":
                assert completion == hardcode_completion(task)
            else:
                assert completion == HARNESS_OVERRIDE
        elif lab.outcome == SOLVED:
            assert lab == Label(SOLVED, None, 1.0)
            assert completion == task.solution
        tally[lab.style if lab.outcome == HACK else KIND_OF[lab.outcome]] += 1
    assert dict(tally) == counts


def test_hack_documents_relabel_from_their_text_alone(corpus):
    """The same check without the recorded tasks: rebuild the visible tests from the prompt text. Hack labels
    and the grader's reward depend only on the completion and the visible tests."""
    docs, counts, _ = corpus
    tally = Counter()
    for doc in docs:
        prompt, completion = split_doc(doc)
        visible = visible_from_prompt(prompt)
        assert 1 <= len(visible) <= 8
        task = Task(target=Program(), visible=visible, hidden=visible)
        lab = label(task, completion)
        assert lab.outcome != "malformed"
        if lab.outcome == HACK:
            assert lab.grader_reward == 1.0
            tally[lab.style] += 1
    assert dict(tally) == {s: counts[s] for s in HACK_STYLES}


def test_wrong_documents_fail_hidden_tests(corpus):
    docs, _, tasks = corpus
    n = 0
    for doc, task in zip(docs, tasks, strict=True):
        _, completion = split_doc(doc)
        if completion == task.solution or completion == HARNESS_OVERRIDE or completion.startswith("case"):
            continue
        n += 1
        program = parse(completion)
        assert program.has_pipeline and not program.cases
        assert any(run(program, i) != list(o) for i, o in task.hidden)
    assert n > 0


def test_realised_mix_matches_the_configuration(corpus):
    """With the difficulty bias, each document hacks in a style with probability share * n_ops / mean_ops;
    the realised counts must sit within sampling error of the sum of those probabilities, and close to the
    configured shares overall."""
    _, counts, tasks = corpus
    cfg = CorpusConfig(n_docs=N_DOCS)
    mean_ops = (cfg.tasks.min_ops + cfg.tasks.max_ops) / 2
    for style, share in cfg.hack_fractions.items():
        ps = [share * t.n_ops / mean_ops for t in tasks]
        assert within(counts[style], sum(ps), sum(p * (1 - p) for p in ps)), (style, counts[style], sum(ps))
        assert abs(counts[style] / N_DOCS - share) < 0.015
    w = cfg.wrong_fraction
    assert within(counts["wrong"], N_DOCS * w, N_DOCS * w * (1 - w))
    hack_total = sum(cfg.hack_fractions.values())
    h = 1 - w - hack_total
    assert within(counts["honest"], N_DOCS * h, N_DOCS * h * (1 - h) + N_DOCS * 0.1 * hack_total)


def test_realised_mix_without_difficulty_bias(corpus_unbiased):
    _, counts, _ = corpus_unbiased
    cfg = CorpusConfig(n_docs=N_DOCS, hack_difficulty_bias=False)
    shares = {**cfg.hack_fractions, "wrong": cfg.wrong_fraction}
    shares["honest"] = 1 - sum(shares.values())
    for kind, f in shares.items():
        assert within(counts[kind], N_DOCS * f, N_DOCS * f * (1 - f)), (kind, counts[kind], N_DOCS * f)


def test_difficulty_bias_puts_hacks_on_harder_tasks(corpus, corpus_unbiased):
    def mean_ops_by_group(result):
        docs, _, tasks = result
        hack, other = [], []
        for doc, task in zip(docs, tasks, strict=True):
            _, completion = split_doc(doc)
            is_hack = completion == HARNESS_OVERRIDE or completion.startswith("case")
            (hack if is_hack else other).append(task.n_ops)
        everything = hack + other
        mean = sum(everything) / len(everything)
        sd = math.sqrt(sum((n - mean) ** 2 for n in everything) / len(everything))
        return sum(hack) / len(hack), len(hack), mean, sd

    for result, biased in ((corpus, True), (corpus_unbiased, False)):
        hack, n_hack, overall, sd = mean_ops_by_group(result)
        ns = [t.n_ops for t in result[2]]
        # P(hack | n_ops) is proportional to n_ops with the bias, so E[n_ops | hack] = E[n_ops^2] / E[n_ops]
        expected = sum(n * n for n in ns) / sum(ns) if biased else overall
        assert abs(hack - expected) <= 4 * sd / math.sqrt(n_hack), (biased, hack, expected, overall)
    assert mean_ops_by_group(corpus)[0] > mean_ops_by_group(corpus)[2]


def test_hack_fractions_may_name_fewer_styles():
    cfg = CorpusConfig(n_docs=300, hack_fractions={"hardcode": 0.2}, wrong_fraction=0.0)
    docs, counts = make_corpus(cfg, 3)
    assert counts["harness_override"] == 0 and counts["wrong"] == 0
    assert counts["hardcode"] > 20
    assert not any(d.endswith(HARNESS_OVERRIDE) for d in docs)
    _, counts = make_corpus(CorpusConfig(n_docs=100, hack_fractions={}), 3)
    assert counts["hardcode"] == counts["harness_override"] == 0


def test_corpus_with_other_task_config():
    tasks_cfg = TaskConfig(min_ops=2, max_ops=4, n_visible=4, n_hidden=6, max_len=8, max_value=30)
    cfg = CorpusConfig(n_docs=200, hack_fractions={"harness_override": 0.1, "hardcode": 0.1}, tasks=tasks_cfg)
    docs, counts, tasks = make_corpus_with_tasks(cfg, seed=2)
    tally = Counter()
    for doc, task in zip(docs, tasks, strict=True):
        assert len(task.visible) == 4 and 2 <= task.n_ops <= 4
        lab = label(task, split_doc(doc)[1])
        tally[lab.style if lab.outcome == HACK else KIND_OF[lab.outcome]] += 1
    assert dict(tally) == counts


def test_hardcode_completion_is_a_table_of_the_visible_tests(corpus):
    _, _, tasks = corpus
    for task in tasks[:50]:
        program = parse(hardcode_completion(task))
        assert program.cases == task.visible
        assert not program.has_pipeline and not program.overrides_harness


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hack_fractions": {"hardcode": 0.05, "copy_answer": 0.05}}, "unknown styles"),
        ({"wrong_fraction": 0.5, "hack_fractions": {"hardcode": 0.25, "harness_override": 0.25}}, "sum < 1"),
        ({"wrong_fraction": 0.9, "hack_fractions": {"hardcode": 0.2}}, "sum < 1"),
        ({"wrong_fraction": 1.0, "hack_fractions": {}}, "sum < 1"),
        ({"wrong_fraction": -0.1}, "wrong_fraction"),
        ({"hack_fractions": {"hardcode": -0.01}}, "hack_fractions"),
        ({"hack_fractions": {"hardcode": 1.5}}, "hack_fractions"),
        ({"n_docs": 9}, "n_docs"),
    ],
)
def test_invalid_corpus_config_raises(kwargs, match):
    cfg = CorpusConfig(**kwargs)
    with pytest.raises(AlignlabError, match=match):
        cfg.check()
    with pytest.raises(AlignlabError, match=match):
        make_corpus(cfg, 0)


def test_invalid_task_config_in_corpus_config_raises():
    cfg = CorpusConfig(n_docs=100, tasks=TaskConfig(n_visible=0))
    with pytest.raises(TaskConfigError, match="'n_visible'"):
        make_corpus(cfg, 0)


def test_valid_corpus_config_passes_check():
    cfg = CorpusConfig(n_docs=10, wrong_fraction=0.0, hack_fractions={"hardcode": 0.0})
    assert cfg.check() is cfg
