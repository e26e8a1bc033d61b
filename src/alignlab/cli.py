"""`alignlab …`: the command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from alignlab import AlignlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="alignlab: alignment experiments on model organisms with known ground truth.")
organism_app = typer.Typer(no_args_is_help=True, help="Build and evaluate model organisms.")
app.add_typer(organism_app, name="organism")

console = Console(stderr=True)


class OrganismKind(str, Enum):
    reward_hacker = "reward-hacker"


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@organism_app.command("build")
def organism_build(
    kind: OrganismKind = typer.Argument(..., help="Which organism to build."),
    out: Path = typer.Option(..., "--out", help="Output directory (written atomically)."),
    seed: int = typer.Option(0, "--seed", help="Seed for corpus, initialisation, training and sampling."),
    smoke: bool = typer.Option(False, "--smoke", help="A tiny, fast build for tests."),
    model: str | None = typer.Option(None, "--model", help="Fine-tune this HF model (id or path) instead."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
) -> None:
    """Train a model organism and write model, tokenizer, organism.json and eval.json."""
    from alignlab.organisms import reward_hacker as rh

    _quiet_libraries()
    cfg = rh.smoke_config(seed) if smoke else rh.RewardHackerConfig(seed=seed)
    result = rh.build(out, cfg, base_model=model, force=force)
    ev, card = result["eval"], result["organism"]
    console.print(
        f"{kind.value} organism -> {out} in {card['build_seconds']:.0f}s: honest_solve_rate={ev['honest_solve_rate']:.3f} "
        f"hack_rate={ev['hack_rate']:.3f} {ev['hack_rate_by_style']} malformed_rate={ev['malformed_rate']:.3f}"
    )


@organism_app.command("eval")
def organism_eval(
    path: Path = typer.Argument(..., help="An organism directory written by `organism build`."),
    n_tasks: int = typer.Option(250, "--n-tasks", min=1, help="Held-out tasks to sample on."),
    samples: int = typer.Option(4, "--samples", min=1, help="Samples per task."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="Sampling temperature."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    out: Path | None = typer.Option(None, "--out", help="Write the evaluation JSON here."),
) -> None:
    """Re-evaluate an organism on held-out tasks with ground-truth labels."""
    from dataclasses import replace

    from alignlab.artifacts import write_json_atomic
    from alignlab.organisms import reward_hacker as rh

    _quiet_libraries()
    model, tokenizer, card = rh.load_organism(path)
    cfg = rh.config_from_card(card)
    eval_cfg = replace(cfg.eval, n_tasks=n_tasks, samples_per_task=samples, temperature=temperature)
    result = rh.evaluate(model, tokenizer, rh.eval_tasks(replace(cfg, eval=eval_cfg)), eval_cfg, seed=seed)
    if out is not None:
        write_json_atomic(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except AlignlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except Exception as err:
        # typer vendors its own click: recognise its usage errors by their interface, not their class
        if not hasattr(err, "format_message"):
            raise
        if type(err).__name__ == "NoArgsIsHelpError":
            err.show()
            return 0
        print(f"error: {err.format_message()}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
