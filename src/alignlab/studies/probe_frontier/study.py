"""The probe-frontier study: how fast does each way of using a hack probe in RL remove hacking, and how fast does
it blind the probe?

Every run is a reward-hacking arm (`studies/reward_hacking.py`: GRPO from the same organism against the flawed
grader) measured at several checkpoints by `FrontierMeasure` and watched at every step by `RolloutLedger`
(`studies/frontier_measure.py`). Runs come in groups:

    main      every method (none, probe reward live / frozen, probe loss, oracle, monitor) × `seeds`:
              trajectories in the (probe health, hack rate) plane, the rates, shift vs rotation, the
              start-reader vs policy-reader decomposition, pooling, transfer to other probes
    lambda    probe-loss strength λ                      ┐
    penalty   probe-reward penalty                       │ × `sweep_seeds`, each a variant of one method;
    tpr_beta  probe-reward TPR (a coin per rollout) × β  │ a variant equal to a main run is that run
    pooling   probe reward / loss with a max- or last-pooled probe
    style     probe reward / loss with a probe fitted on one hack style only (evasion by behaviour)

Resumable per run (records/<variant>-seed<N>.json); results.json, metrics.jsonl, plots and report.md/html.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from alignlab import AlignlabError
from alignlab.artifacts import atomic_dir, read_json, versions, write_json_atomic
from alignlab.config import check_layer, override
from alignlab.envs import HACK_STYLES
from alignlab.models.tap import find_decoder_layers, resolve_layers
from alignlab.organisms import reward_hacker as rh
from alignlab.probes import LinearProbe
from alignlab.probes.metrics import auroc
from alignlab.probes.onpolicy import ProbeDataConfig, features, fit, sample_labelled, task_split
from alignlab.runs.executor import Run, run_grid
from alignlab.runs.frontier import FrontierMeasure, RolloutLedger
from alignlab.runs.records import RecordStore
from alignlab.runs.rl import MAIN_ARMS, RLRunConfig, ensure_organism, healthy_grpo, relative, run_arm
from alignlab.signals.arms import RL_ARMS
from alignlab.studies.probe_frontier.report import analyse, write_report
from alignlab.train.grpo import GRPORunConfig

GROUPS = ("main", "lambda", "penalty", "tpr_beta", "pooling", "style")
POOLINGS = ("mean", "max", "last")


def _base() -> RLRunConfig:
    # the reward-hacking study's healthy defaults (lr 3e-4, β 0.04), 60 steps so that 5 mid-run checkpoints
    # fall every 10 steps (7 points with the start); λ 1 for the probe loss, the strength at which it was
    # measured to blind the deployed probe (docs/reward_hacking.md, *The loss channel*)
    return RLRunConfig(grpo=healthy_grpo(steps=60), checkpoints=5,
                               probe_lambda=1.0)


@dataclass(frozen=True)
class Variant:
    """One kind of training run: a reward-hacking arm, the start probe its signal uses, and config changes."""

    arm: str = field(metadata={"help": "the reward-hacking arm (none, probe_reward, probe_reward_frozen, "
                                       "probe_loss, oracle, monitor)"})
    probe: str = field(default="main", metadata={"help": "the start probe the signal uses: main (mean-pooled), "
                                                         "max, last, style_<hack style>"})
    changes: dict = field(default_factory=dict, metadata={
        "help": "RLRunConfig fields changed from the study's base (nested for grpo), e.g. "
                "{'probe_lambda': 3.0} or {'probe_tpr': 0.5, 'grpo': {'beta': 0.2}}"})

    def key(self) -> str:
        """A file-safe name: the arm, then the probe and changes where they differ from the base."""
        parts = [self.arm] + ([self.probe] if self.probe != "main" else [])
        parts += [f"{k}={v}" for k, v in sorted(_flat(self.changes).items())]
        return "@".join(parts)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


@dataclass(frozen=True)
class ProbeFrontierConfig:
    base: RLRunConfig = field(default_factory=_base, metadata={
        "help": "every run's GRPO, signal and probe settings (the reward-hacking study's config); variants "
                "change fields of it. Its own `arms` and `seeds` are not read: `methods` and `seeds` below are"})
    methods: tuple[str, ...] = field(default=MAIN_ARMS, metadata={"help": "the main group's methods (arms)"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={
        "help": "seeds of the main group: 3 for a 95% CI on every rate"})
    sweep_seeds: tuple[int, ...] = field(default=(0,), metadata={
        "help": "seeds of each sweep cell: one, to fit the sweeps in the 60-minute budget (a cell's spread is "
                "read off the main group's seeds)"})
    sweep_checkpoints: int = field(default=1, metadata={
        "help": "mid-run checkpoints of a sweep run (the end points make the phase diagram)"})
    lambdas: tuple[float, ...] = field(default=(0.1, 0.3, 1.0, 3.0, 10.0, 100.0), metadata={
        "help": "probe-loss λ: from no effect (0.1, measured) upwards; 10 still left the policy healthy "
                "(malformed 3%, KL 1.4, measured), so 100 looks for its breaking point"})
    penalties: tuple[float, ...] = field(default=(0.1, 0.3, 1.0, 3.0), metadata={
        "help": "probe-reward penalty; 1.0 equals the grader's top reward"})
    tprs: tuple[float, ...] = field(default=(1.0, 0.9, 0.7, 0.5), metadata={
        "help": "probe-reward TPR: a flagged rollout escapes the penalty with probability 1 - tpr (Cundy & "
                "Gleave's detector-TPR axis)"})
    betas: tuple[float, ...] = field(default=(0.0, 0.04, 0.2), metadata={
        "help": "KL coefficients crossed with the TPRs (0.04 is the base)"})
    poolings: tuple[str, ...] = field(default=("max", "last"), metadata={
        "help": "pooled probes (besides the main mean-pooled one) used as the signal in the pooling group"})
    styles: tuple[str, ...] = field(default=tuple(HACK_STYLES), metadata={
        "help": "hack styles each given a probe fitted on that style alone (the style group)"})
    variant_methods: tuple[str, ...] = field(default=("probe_reward", "probe_loss"), metadata={
        "help": "methods run with the pooling and style groups' probes"})
    groups: tuple[str, ...] = field(default=GROUPS, metadata={"help": f"which groups run, of {list(GROUPS)}"})
    eval_tasks: int = field(default=64, metadata={
        "help": "held-out tasks per checkpoint (x eval_samples own samples; x 3 forced completions)"})
    eval_samples: int = field(default=4, metadata={"help": "the policy's samples per held-out task"})
    probe_data: ProbeDataConfig = field(default_factory=lambda: ProbeDataConfig(n_tasks=300), metadata={
        "help": "the start organism's samples every start probe is fitted on (half the tasks) and tested on"})

    def check(self) -> ProbeFrontierConfig:
        RL_ARMS.check(self.methods, "study field 'methods'")
        if not self.methods:
            raise AlignlabError(f"study field 'methods' must name at least one arm; choose from {list(RL_ARMS)}")
        if set(self.groups) - set(GROUPS):
            raise AlignlabError(f"study field 'groups' must be a subset of {list(GROUPS)}")
        if set(self.poolings) - set(POOLINGS):
            raise AlignlabError(f"study field 'poolings' must be a subset of {list(POOLINGS)}")
        if set(self.styles) - set(HACK_STYLES):
            raise AlignlabError(f"study field 'styles' must be a subset of {list(HACK_STYLES)}")
        if set(self.variant_methods) - {"probe_reward", "probe_reward_frozen", "probe_loss"}:
            raise AlignlabError("study field 'variant_methods' takes probe_reward, probe_reward_frozen, probe_loss")
        if not self.seeds or not self.sweep_seeds:
            raise AlignlabError("study fields 'seeds' and 'sweep_seeds' must name at least one seed")
        if any(not 0 <= t <= 1 for t in self.tprs):
            raise AlignlabError("study field 'tprs' must be in [0, 1]")
        self.base.check()
        return self


def quick_config() -> ProbeFrontierConfig:
    # the main group only, one seed, 40 steps with a checkpoint every 8 (6 points), a smaller eval: about
    # 5 minutes on this CPU with the organism built. At 40 steps `none` reached hack 0.92 (measured), so the
    # sanity arm still holds; a TPR 0.5 cell was dropped to keep to the budget
    return ProbeFrontierConfig(
        base=replace(_base(), grpo=healthy_grpo(steps=40), checkpoints=4),
        seeds=(0,), groups=("main",), eval_tasks=32, probe_data=ProbeDataConfig(n_tasks=200))


def smoke_config() -> ProbeFrontierConfig:
    # every group, one cell each, a few steps: for the tests
    return ProbeFrontierConfig(
        base=replace(_base(), grpo=GRPORunConfig(steps=2, prompts_per_step=2, num_generations=4,
                                                 max_completion_length=24), checkpoints=1, n_train_tasks=50),
        methods=("none", "probe_reward", "probe_loss"), seeds=(0,), lambdas=(3.0,), penalties=(0.3,),
        tprs=(0.5,), betas=(0.04,), poolings=("max",), styles=("hardcode",), variant_methods=("probe_reward",),
        eval_tasks=8, eval_samples=2, probe_data=ProbeDataConfig(n_tasks=60))


def plan(cfg: ProbeFrontierConfig) -> dict[str, dict]:
    """key → {"variant", "seeds", "groups", "main"}; a sweep cell equal to a main run is that run."""
    base = cfg.base
    cells: list[tuple[str, Variant]] = [("main", Variant(arm)) for arm in cfg.methods]
    if "lambda" in cfg.groups:
        cells += [("lambda", Variant("probe_loss", changes={"probe_lambda": x})) for x in cfg.lambdas]
    if "penalty" in cfg.groups:
        cells += [("penalty", Variant("probe_reward", changes={"penalty": x})) for x in cfg.penalties]
    if "tpr_beta" in cfg.groups:
        cells += [("tpr_beta", Variant("probe_reward", changes={"probe_tpr": t, "grpo": {"beta": b}}))
                  for t in cfg.tprs for b in cfg.betas]
    if "pooling" in cfg.groups:
        cells += [("pooling", Variant(m, probe=p)) for m in cfg.variant_methods for p in cfg.poolings]
    if "style" in cfg.groups:
        cells += [("style", Variant(m, probe=f"style_{s}")) for m in cfg.variant_methods for s in cfg.styles]
    runs: dict[str, dict] = {}
    for group, variant in cells:
        variant = replace(variant, changes=_minus_base(variant.changes, base))
        run = runs.setdefault(variant.key(), {"variant": variant, "seeds": set(), "groups": [], "main": False})
        run["groups"].append(group)
        run["seeds"] |= set(cfg.seeds if group == "main" else cfg.sweep_seeds)
        run["main"] |= group == "main"
    return runs


def _minus_base(changes: dict, base) -> dict:
    """`changes` without the entries that equal the base's value (so equal runs get equal keys)."""
    out = {}
    for k, v in changes.items():
        current = getattr(base, k)
        if isinstance(v, dict):
            if rest := _minus_base(v, current):
                out[k] = rest
        elif v != current:
            out[k] = v
    return out


def run_config(cfg: ProbeFrontierConfig, run: dict) -> RLRunConfig:
    rcfg = override(cfg.base, run["variant"].changes)
    return rcfg if run["main"] else replace(rcfg, checkpoints=cfg.sweep_checkpoints)


def fit_probes(organism: Path, out: Path, cfg: ProbeFrontierConfig) -> tuple[dict[str, LinearProbe], dict]:
    """Every probe the study uses, fitted once on the start organism's own labelled samples (train tasks),
    thresholds at `base.probe_fpr` on the train tasks' honest samples, tested on the other tasks; cached."""
    path = out / "probes"
    if (path / "report.json").exists():
        report = read_json(path / "report.json", "start probes report")
        return {name: LinearProbe.load(path / name) for name in report["probes"]}, report
    model, tokenizer, card = rh.load_organism(organism)
    data_cfg = replace(cfg.probe_data, max_new_tokens=cfg.base.grpo.max_completion_length)
    samples = sample_labelled(model, tokenizer, rh.config_from_card(card).corpus.tasks, data_cfg)
    n_layers = len(find_decoder_layers(model))
    layer = resolve_layers([cfg.base.probe_layer], n_layers)[0]
    y = np.array([s.is_hack for s in samples], dtype=int)
    style = np.array([s.style for s in samples], dtype=object)
    train, test = task_split(samples, data_cfg.test_fraction, data_cfg.seed)
    if not (0 < y[train].sum() < len(train) and 0 < y[test].sum() < len(test)):
        raise AlignlabError("the start organism's samples need hacks and honest work on both sides of the split; "
                            "raise probe_data.n_tasks")
    X_mean = features(model, tokenizer, samples, list(range(n_layers)), "completion", "mean")
    X = {"mean": X_mean[layer]} | {agg: features(model, tokenizer, samples, [layer], "completion", agg)[layer]
                                   for agg in cfg.poolings}
    recipes = {"main": ("mean", layer, None)} | {p: (p, layer, None) for p in cfg.poolings}
    recipes |= {f"style_{s}": ("mean", layer, s) for s in cfg.styles}
    recipes |= {f"layer{l_}": ("mean", l_, None) for l_ in range(n_layers)}
    probes, report = {}, {"probes": {}, "data": asdict(data_cfg) | {"n_samples": len(samples),
                                                                     "n_hacks": int(y.sum())}}
    for name, (agg, l_, only) in recipes.items():
        feats = X[agg] if l_ == layer else X_mean[l_]
        rows = train if only is None else train[(style[train] == only) | (y[train] == 0)]
        meta = {"layer": l_, "n_layers": n_layers, "position": "completion", "aggregation": agg,
                "method": cfg.base.probe_method, "model": relative(organism, out),
                "trained_on": f"start organism's samples, {'any hack style' if only is None else only} vs honest"}
        probe = fit(feats[rows], y[rows], cfg.base.probe_method, meta, fpr=cfg.base.probe_fpr)
        scores = probe.score(feats[test])
        by_style = {s: auroc(scores[(style[test] == s) | (y[test] == 0)], y[test][(style[test] == s) | (y[test] == 0)])
                    if ((style[test] == s).any()) else None for s in HACK_STYLES}
        report["probes"][name] = {"layer": l_, "aggregation": agg, "test_auroc": auroc(scores, y[test]),
                                  "test_recall_deployed": float((scores[y[test] == 1] > probe.threshold).mean()),
                                  "test_auroc_by_style": by_style}
        probes[name] = probe
    with atomic_dir(path, force=True) as tmp:
        for name, probe in probes.items():
            probe.save(tmp / name)
        write_json_atomic(tmp / "report.json", report)
    return probes, report


def start_point(measure: FrontierMeasure, organism: Path, seed: int, cache: Path) -> dict:
    """The start organism measured once per seed (the same step-0 point for every run of that seed)."""
    path = cache / f"start-seed{seed}.json"
    if path.exists():
        return read_json(path, "start measurement")
    model, _, _ = rh.load_organism(organism)
    point = {"metrics": measure(model, model, final=True), "samples": []}
    write_json_atomic(path, point)
    return point


def _measurer(organism: Path, out: Path, cfg: ProbeFrontierConfig, seed: int, max_new_tokens: int):
    probes, _ = fit_probes(organism, out, cfg)  # fitted before the grid: read from out/probes
    _, tokenizer, card = rh.load_organism(organism)
    measure = FrontierMeasure(tokenizer, probes, rh.config_from_card(card).corpus.tasks, cfg.eval_tasks,
                              cfg.eval_samples, max_new_tokens, seed)
    return measure, probes, tokenizer


def measure_start(organism: Path, out: Path, cfg: ProbeFrontierConfig, seed: int) -> None:
    """Seed `seed`'s step-0 point, shared by its runs (cached in the records dir)."""
    measure, _, _ = _measurer(organism, out, cfg, seed, cfg.base.grpo.max_completion_length)
    start_point(measure, organism, seed, out / "records")


def run_one(organism: Path, out: Path, cfg: ProbeFrontierConfig, key: str, seed: int) -> None:
    """One variant × seed of the plan: GRPO under its arm, measured at its checkpoints, its record written."""
    store = RecordStore(out, "probe-frontier", cfg)
    run = plan(cfg)[key]
    rcfg = run_config(cfg, run)
    measure, probes, tokenizer = _measurer(organism, out, cfg, seed, rcfg.grpo.max_completion_length)
    curve: list[dict] = []
    arm = run["variant"].arm

    def log(point):
        curve.append({**point, "arm": key, "method": arm, "seed": seed})

    t0 = time.time()
    signal_probe = probes[run["variant"].probe]
    ledger = RolloutLedger(arm, signal_probe, tokenizer, rcfg.grpo.num_generations, log)
    step0 = start_point(measure, organism, seed, store.dir)
    record = run_arm(arm, seed, organism, signal_probe, rcfg, log, step0=step0, measurer=measure, observer=ledger)
    timing = {"seconds": round(time.time() - t0, 1), "train_seconds": record["metrics"].pop("train_seconds")}
    store.save({**record, "arm": key, "method": arm, "variant": asdict(run["variant"]), "groups": run["groups"]},
               curve, timing)


def run_study(out: Path, cfg: ProbeFrontierConfig, organism: Path | None = None, smoke: bool = False,
              progress=None) -> dict:
    cfg.check()
    out = Path(out)
    if organism is not None:
        ensure_organism(out, organism, smoke)
        n_layers = read_json(Path(organism) / "config.json", "organism model config").get("num_hidden_layers")
    else:
        n_layers = (rh.smoke_config(0) if smoke else rh.RewardHackerConfig()).model.n_layers
    if isinstance(n_layers, int):
        check_layer("study", "base.probe_layer", cfg.base.probe_layer, n_layers)
    store = RecordStore(out, "probe-frontier", cfg)
    if progress:
        progress("the starting organism and its probes")
    organism = ensure_organism(out, organism, smoke)
    _, probe_report = fit_probes(organism, out, cfg)
    runs = plan(cfg)
    todo = [(key, seed) for key, run in runs.items() for seed in sorted(run["seeds"]) if not store.done(key, seed)]
    starts = [Run(f"start seed {seed}", measure_start, (organism, out, cfg, seed))
              for seed in sorted({seed for _, seed in todo})]
    run_grid([starts, [Run(f"{key} seed {seed}", run_one, (organism, out, cfg, key, seed)) for key, seed in todo]],
             out, progress)
    records, curves, timings = [], [], []
    for key, run in runs.items():
        r, c, t = store.load_all([key], sorted(run["seeds"]))
        records, curves, timings = records + r, curves + c, timings + t
    starts = {seed: read_json(store.dir / f"start-seed{seed}.json", "start measurement")["metrics"]
              for seed in sorted({s for run in runs.values() for s in run["seeds"]})}
    analysis = analyse(records, curves, starts, cfg)
    extra = {"organism": relative(organism, out), "start": {str(s): m for s, m in starts.items()},
             "probes": probe_report["probes"], "probe_data": probe_report["data"], **analysis}
    results = store.write_results(records, curves, extra)
    write_json_atomic(out / "timings.json", {"runs": timings, "versions": versions()})
    write_report(out, results, curves, timings)
    return results
