"""The PEP8 task world: line scores are pycodestyle's own verdicts, the split is by file and stable, samples and
repairs are scored the way the study needs."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import warnings

import pytest

from alignlab import AlignlabError
from alignlab.envs import pep8
from alignlab.envs.pep8 import (
    Pep8CorpusConfig,
    doc_score,
    line_scores,
    line_violations,
    load_corpus,
    repair_doc,
    score_sample,
    split_lines,
    stdlib_files,
)

MIXED = (
    "import os\n"
    "def f( a ):\n"  # E302, E201, E202
    "    y = a*2 + 1\n"  # E226, which is in pycodestyle's DEFAULT_IGNORE
    "    z = (a\n"
    "         + 1)\n"  # W503, in DEFAULT_IGNORE
    "    return y+z  \n"  # W291 (and E226 again)
    "x=f(1)\n"  # E305, E225
    "s = '" + "a" * 80 + "'\n"  # E501
)


def _doc(source: str) -> pep8.ScoredDoc:
    return list(zip(split_lines(source), line_scores(source), strict=True))


def _write(root, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_bad_line_scores_positive_and_clean_line_zero():
    assert line_violations("x=1\ny = 1\n") == [["E225"], []]
    assert line_scores("x=1\ny = 1\n") == [1 / 4, 0.0]


def test_one_entry_per_line_split_at_newline_only():
    source = "a = 1\n\x0cb = 2\nc = 3"  # a form feed is inside a line; the last line has no "\n"
    assert len(line_violations(source)) == len(line_scores(source)) == len(split_lines(source)) == 3
    assert "".join(split_lines(source)) == source
    assert line_violations("") == [] and line_scores("") == []


def test_blank_line_checks_see_their_context():
    per_line = line_violations("import os\ndef f():\n    pass\n")
    assert per_line == [[], ["E302"], []]  # on the def, not on the import before it
    assert line_violations("import os\n\n\ndef f():\n    pass\n") == [[]] * 5


def test_same_codes_as_the_pycodestyle_command(tmp_path):
    """Default options, DEFAULT_IGNORE included (E226, W503 are not reported), exactly as `pycodestyle file.py`."""
    path = tmp_path / "mixed.py"
    path.write_text(MIXED)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}  # no user config
    cli = subprocess.run([sys.executable, "-m", "pycodestyle", str(path)], capture_output=True, text=True, env=env)
    expected = sorted((int(line.split(":")[1]), line.split(": ")[1][:4]) for line in cli.stdout.splitlines())
    ours = sorted((i + 1, code) for i, codes in enumerate(line_violations(MIXED)) for code in codes)
    assert ours == expected
    assert {"E302", "E225", "E501", "W291"} <= {code for _, code in ours}
    assert not {"E226", "W503"} & {code for _, code in ours}


def test_importing_autopep8_does_not_change_scores():
    import autopep8  # noqa: F401  (patches the shared pycodestyle's checks: E301 after a class docstring)

    pep8._options.cache_clear()
    pep8._pycodestyle.cache_clear()
    assert line_violations('class A:\n    """Doc."""\n    def f(self):\n        pass\n') == [[]] * 4
    assert all(fn.__name__ != "extended_blank_lines" for _, fn, _ in pep8._options().logical_checks)


def test_checking_is_silent(capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        codes = line_violations("x = '\\d'\ndef f(:\n")  # an invalid escape (compile() warns) and a syntax error
    assert "W605" in codes[0]
    assert not caught
    assert capfd.readouterr() == ("", "")


def test_score_sample_drops_a_truncated_last_line():
    assert score_sample("x = 1\ny=2") == {"violations": 0, "chars": 6, "score": 0.0, "syntax_error": False, "codes": {}}
    whole = score_sample("x = 1\ny=2\n")
    assert (whole["violations"], whole["chars"], whole["codes"]) == (1, 10, {"E225": 1})
    assert whole["score"] == 1 / 10
    for empty in ("", "no newline at all"):
        assert score_sample(empty)["score"] == 0 and score_sample(empty)["chars"] == 0


def test_score_sample_flags_syntax_errors_apart_from_style():
    out = score_sample("x=1\ndef f(:\n    pass\n")
    assert out["syntax_error"]
    assert any(code.startswith("E9") for code in out["codes"])
    assert out["violations"] == sum(n for code, n in out["codes"].items() if not code.startswith("E9"))
    assert out["codes"]["E225"] == 1
    assert not score_sample("x = 1\n")["syntax_error"]


def test_doc_score_is_violations_per_character():
    doc = [("x=1\n", 0.25), ("y = 1\n", 0.0), ("z=a==b\n", 2 / 7)]
    assert doc_score(doc) == pytest.approx(3 / 17)
    assert doc_score([]) == 0.0


def test_stdlib_files_leaves_out_tests_and_tooling(tmp_path):
    root = tmp_path / "test_root"  # the root's own name must not matter
    files = [
        "top.py",
        "pkg/mod.py",
        "pkg/test_mod.py",
        "test/a.py",
        "pkg/tests/b.py",
        "testing/c.py",
        "idlelib/d.py",
        "lib2to3/e.py",
        "site-packages/f.py",
        "__pycache__/g.py",
        "pkg/notes.txt",
    ]
    _write(root, dict.fromkeys(files, "x = 1\n"))
    assert [p.relative_to(root).as_posix() for p in stdlib_files(root)] == ["pkg/mod.py", "top.py"]
    with pytest.raises(AlignlabError, match="not a directory"):
        stdlib_files(tmp_path / "missing")


def _tree(root, n_files=12):
    _write(root, {f"m{k:02d}.py": "".join(f"v_{k}_{i} = {i}\n" for i in range(40)) for k in range(n_files)})
    (root / "empty.py").write_text("\n")


def test_split_is_by_file_deterministic_and_covers_every_line(tmp_path):
    _tree(tmp_path)
    cfg = Pep8CorpusConfig(root=str(tmp_path), held_out_fraction=0.5)
    corpus = load_corpus(cfg)
    assert corpus.n_files["train"] > 0 and corpus.n_files["held_out"] > 0
    assert sum(corpus.n_files.values()) == 12  # the empty file is skipped
    owner = {}
    for name in ("train", "held_out"):
        for doc in getattr(corpus, name):
            assert 1 <= len(doc) <= 32
            for text, _ in doc:
                owner.setdefault(text.split("_")[1], set()).add(name)  # "v_<file>_<line> = ..."
    assert len(owner) == 12 and all(len(sides) == 1 for sides in owner.values())
    assert sum(len(doc) for doc in corpus.train + corpus.held_out) == 12 * 40
    again = load_corpus(cfg)
    assert (again.train, again.held_out, again.corpus_hash) == (corpus.train, corpus.held_out, corpus.corpus_hash)
    (tmp_path / "m00.py").write_text("x=1\n" * 40)  # content changes; the file keeps its side
    changed = load_corpus(cfg)
    side = "train" if "train" in owner["0"] else "held_out"
    assert changed.n_files == corpus.n_files
    assert any(doc[0][0] == "x=1\n" for doc in getattr(changed, side))


def test_corpus_hash_follows_file_contents(tmp_path):
    _tree(tmp_path, n_files=3)
    cfg = Pep8CorpusConfig(root=str(tmp_path))
    first = load_corpus(cfg)
    assert load_corpus(cfg).corpus_hash == first.corpus_hash
    (tmp_path / "m01.py").write_text((tmp_path / "m01.py").read_text() + "extra = 1\n")
    assert load_corpus(cfg).corpus_hash != first.corpus_hash
    assert load_corpus(Pep8CorpusConfig(root=str(tmp_path), max_files=2)).corpus_hash != first.corpus_hash
    assert first.python_version == platform.python_version()


def test_documents_and_bad_line_fraction(tmp_path):
    _write(tmp_path, {"a.py": "x=1\n" * 10 + "y = 2\n" * 60})
    corpus = load_corpus(Pep8CorpusConfig(root=str(tmp_path), held_out_fraction=0.0))
    assert [len(doc) for doc in corpus.train] == [32, 32, 6]
    assert corpus.bad_line_fraction == pytest.approx(10 / 70)
    assert corpus.train[0][0] == ("x=1\n", 1 / 4)


def test_smoke_on_the_real_stdlib():
    corpus = load_corpus(Pep8CorpusConfig(max_files=4))
    assert 1 <= sum(corpus.n_files.values()) <= 4
    assert corpus.train or corpus.held_out
    assert all(score >= 0 for doc in corpus.train + corpus.held_out for _, score in doc)


@pytest.mark.parametrize(
    "field, value",
    [("max_doc_lines", 0), ("held_out_fraction", 1.0), ("held_out_fraction", -0.1), ("max_files", 0), ("root", "")],
)
def test_check_names_the_field(field, value):
    with pytest.raises(AlignlabError, match=f"pep8 corpus field '{field}'"):
        Pep8CorpusConfig(**{field: value}).check()
    with pytest.raises(AlignlabError, match=f"'{field}'"):
        load_corpus(Pep8CorpusConfig(**{field: value}))


def test_repair_lowers_a_bad_doc_and_skips_a_clean_one():
    bad = _doc("import os\ndef f( a ):\n  return a+1\nx=f(1)\n")
    repaired = repair_doc(bad)
    assert repaired is not None
    assert doc_score(repaired) < doc_score(bad)
    assert doc_score(repaired) == pytest.approx(doc_score(_doc("".join(text for text, _ in repaired))))
    assert repair_doc(_doc("import os\n\n\ndef f(a):\n    return a + 1\n")) is None


def test_repair_keeps_a_documents_indentation():
    """Most documents start inside a block; the repair must not dedent them to make them parse."""
    bad = [("        x=1\n", 1 / 12), ("        y = [1,2]\n", 1 / 18), ("    return y\n", 0.0)]
    repaired = repair_doc(bad)
    assert repaired is not None
    assert [text for text, _ in repaired] == ["        x = 1\n", "        y = [1, 2]\n", "    return y\n"]
    assert doc_score(repaired) == 0.0


def test_judged_lines_skip_the_context_and_keep_form_feeds_inside_a_line():
    from alignlab.envs.pep8 import judged_lines

    lines, codes = judged_lines("y=2\nz = 3  # a\x0cb\nw", context="x = 1\n")
    assert lines == ["y=2\n", "z = 3  # a\x0cb\n"]  # the truncated "w" is not judged, "\x0c" splits nothing
    assert "E225" in codes[0] and len(codes) == 2
    assert judged_lines("no newline") == ([], [])
