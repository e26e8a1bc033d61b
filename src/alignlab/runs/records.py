"""The one resume store of every study: a config guard, cached stages and arm × seed records (JSON, atomic).

A study dir holds `config.json` (a re-run with another config is refused: one guard for every study), stage
results under a folder of their own (`stage(name, fn)`: run once, cached) and one record per arm × seed under
`records/`, assembled into results.json. A killed study re-run with the same --out redoes only what was not
finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from alignlab import AlignlabError
from alignlab.artifacts import read_json, versions, write_json_atomic, write_text_atomic


class RecordStore:
    def __init__(self, out: Path, study: str, config):
        self.out, self.study = Path(out), study
        self.dir = self.out / "records"
        self.config = json.loads(json.dumps(asdict(config)))  # tuples -> lists, as they read back
        self.timings: dict[str, float] = {}  # seconds of the stages run by this process
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self.out / "config.json"
        if saved.exists():
            if read_json(saved, "study config") != self.config:
                raise AlignlabError(f"{saved} holds a different config: resume with the same options or a new --out")
        else:
            write_json_atomic(saved, self.config)

    def stage(self, name: str, fn, folder: str = "stages") -> dict:
        """`fn()`'s JSON result, computed once: cached as OUT/<folder>/<name>.json, so a re-run resumes after the
        last finished stage. Its time goes to `timings` (kept out of results.json)."""
        path = self.out / folder / f"{name}.json"
        if path.exists():
            return read_json(path, "study stage")
        t0 = time.time()
        result = fn()
        self.timings[name] = round(time.time() - t0, 1)
        # the clock beside the result (never in it: the same seed writes the same JSON), for whichever process
        # assembles the timings; written first, so a finished stage always has it
        write_json_atomic(self.out / folder / f"{name}.seconds.json", {"seconds": self.timings[name]})
        write_json_atomic(path, result)
        return result

    def all_stage_seconds(self, folder: str = "stages") -> dict[str, float]:
        """Every finished stage's seconds, whichever process ran it."""
        return {p.name[: -len(".seconds.json")]: read_json(p, "stage timing")["seconds"]
                for p in sorted((self.out / folder).glob("*.seconds.json"))}

    def stage_seconds(self, name: str, folder: str = "stages") -> float | None:
        """The seconds stage `name` took, in whichever process ran it (None: run by an older version)."""
        path = self.out / folder / f"{name}.seconds.json"
        return read_json(path, "stage timing")["seconds"] if path.exists() else None

    def _path(self, arm: str, seed: int) -> Path:
        return self.dir / f"{arm}-seed{seed}.json"

    def done(self, arm: str, seed: int) -> bool:
        return self._path(arm, seed).exists()

    def save(self, record: dict, curve: list[dict], timing: dict) -> None:
        write_json_atomic(self._path(record["arm"], record["seed"]), {"record": record, "curve": curve,
                                                                       "timing": timing})

    def load_all(self, arms, seeds) -> tuple[list[dict], list[dict], list[dict]]:
        records, curves, timings = [], [], []
        for arm in arms:
            for seed in seeds:
                data = read_json(self._path(arm, seed), "study record")
                records.append(data["record"])
                curves += data["curve"]
                timings.append({"arm": arm, "seed": seed, **data["timing"]})
        return records, curves, timings

    def write_results(self, records: list[dict], curves: list[dict], extra: dict) -> dict:
        results = {"study": self.study, "config": self.config, "versions": versions(), **extra,
                   "records": records}
        write_json_atomic(self.out / "results.json", results)
        write_text_atomic(self.out / "metrics.jsonl", "".join(json.dumps(c, sort_keys=True) + "\n" for c in curves))
        return results
