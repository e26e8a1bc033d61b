"""Plain causal-LM training (MLE) with the HF Trainer, so accelerate/DeepSpeed apply unchanged."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from alignlab import AlignlabError, interrupts
from alignlab.config import doc


@dataclass(frozen=True)
class LMTrainConfig:
    epochs: float = doc("passes over the documents", 1.0)
    learning_rate: float = doc("peak learning rate (cosine schedule)", 3e-3)
    batch_size: int = doc("documents per step (per process)", 64)
    warmup_ratio: float = doc("share of steps warming up", 0.03)
    weight_decay: float = doc("AdamW weight decay", 0.01)
    max_len: int = doc("tokens per document (cut to max_len - 1, then EOS)", 256)
    seed: int = doc("data order and initialisation seed", 0)


class _TokenizedTexts(torch.utils.data.Dataset):
    def __init__(self, tokenizer, texts: list[str], max_len: int):
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        self.rows = [[*row[:max_len - 1], tokenizer.eos_token_id] for row in ids]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i]}


def training_args(cfg: LMTrainConfig, out_dir: str, **overrides) -> TrainingArguments:
    args = dict(
        output_dir=out_dir,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="cosine",
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=50,
        save_strategy="no",
        report_to=report_to(),
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,  # our own labelled bar instead (quiet_trainer)
        dataloader_num_workers=0,
    )
    args.update(overrides)
    return TrainingArguments(**args)


def report_to() -> list[str]:
    """The Trainer's own integrations: TensorBoard when `--tensorboard DIR` set ALIGNLAB_TENSORBOARD (off by
    default; `pip install -e ".[tensorboard]"`)."""
    if not os.environ.get("ALIGNLAB_TENSORBOARD"):
        return []
    from transformers.integrations import is_tensorboard_available

    if not is_tensorboard_available():
        raise AlignlabError('--tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"')
    return ["tensorboard"]


_runs = itertools.count()


def quiet_trainer(trainer, what: str = "training") -> None:
    """Replace the Trainer's tqdm bar and printed log dicts with one labelled rich bar (see `progress`); with
    TensorBoard on, give each training run its own log directory."""
    from transformers.integrations import TensorBoardCallback

    from alignlab.progress import TrainerProgress

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TrainerProgress(what))
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            slug = re.sub(r"[^A-Za-z0-9.]+", "-", what).strip("-")[:60]
            cb.logging_dir = str(Path(os.environ["ALIGNLAB_TENSORBOARD"]) / f"{next(_runs):03d}-{slug}")


def describe(model, what: str) -> str:
    """`a 1.1M-parameter Llama` for progress labels."""
    n = sum(p.numel() for p in model.parameters())
    arch = type(model).__name__.removesuffix("ForCausalLM")
    return f"{what} a {n / 1e6:.1f}M-parameter {arch}"


class EveryNSteps(TrainerCallback):
    """Call `fn(step)` every `every` optimizer steps before the last (the caller measures the end itself)."""

    def __init__(self, every: int, fn):
        self.every, self.fn = every, fn

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self.fn(state.global_step)


class _SaveOnTerm(TrainerCallback):
    """A held SIGTERM (`interrupts.hold_term`): save a checkpoint at the end of this step, then stop the run."""

    def on_step_end(self, args, state, control, **kwargs):
        if interrupts.term_pending():
            control.should_save = True  # the Trainer saves right after this callback, then calls on_save

    def on_save(self, args, state, control, **kwargs):
        interrupts.raise_pending()


CHECKPOINT_EVERY = 0.1  # a share of the run's steps: a kill loses at most this much training


def last_checkpoint(checkpoint_dir: str | Path | None) -> tuple[str | None, int]:
    """(path, step) of the newest complete Trainer checkpoint under `checkpoint_dir`, or (None, 0). The Trainer
    writes trainer_state.json last, so a checkpoint without it was cut short by a kill: it is removed. So is one
    whose files no longer parse (a damaged disk, a hand edit), saying so: it is our own temp state, recomputable."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None, 0
    complete = []
    for path in Path(checkpoint_dir).glob("checkpoint-*"):
        if (path / "trainer_state.json").is_file() and path.name.split("-")[1].isdigit():
            if (damage := _damaged(path)) is None:
                complete.append((int(path.name.split("-")[1]), path))
                continue
            from alignlab.progress import say

            say(f"the checkpoint {path} is damaged ({damage}): removed it; training goes back to an earlier "
                "checkpoint or the start")
        shutil.rmtree(path, ignore_errors=True)
    if not complete:
        return None, 0
    step, path = max(complete)
    return str(path), step


def _damaged(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files, or None: JSON that parses, safetensors whose header and length
    agree, torch.save zips whose CRCs match (checked without unpickling anything)."""
    import json
    import zipfile

    from safetensors import safe_open

    for file in sorted(checkpoint.iterdir()):
        try:
            if file.suffix == ".json":
                json.loads(file.read_text())
            elif file.suffix == ".safetensors":
                with safe_open(str(file), "pt") as fh:
                    for key in fh.keys():  # noqa: SIM118 (a safe_open handle is no dict)
                        fh.get_slice(key)
            elif file.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(file) as zf:
                    if (bad := zf.testzip()) is not None:
                        return f"{file.name}: {bad} fails its CRC"
        except Exception as err:  # any parse failure means the same: damaged
            return f"{file.name}: {type(err).__name__}: {' '.join(str(err).split())[:120]}"
    return None


def train_lm(model, tokenizer, texts: list[str], cfg: LMTrainConfig, callbacks=(),
             checkpoint_dir: str | Path | None = None) -> list[dict]:
    """Train `model` in place on `texts` (each followed by EOS). Returns the Trainer's log history.
    With `checkpoint_dir`, Trainer checkpoints are kept there and a later call resumes from the newest."""
    dataset = _TokenizedTexts(tokenizer, texts, cfg.max_len)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    with contextlib.ExitStack() as stack:
        if checkpoint_dir is None:
            out, saving = stack.enter_context(tempfile.TemporaryDirectory()), {}
        else:
            out = str(checkpoint_dir)
            saving = {"save_strategy": "steps", "save_steps": CHECKPOINT_EVERY, "save_total_limit": 1}
            stack.enter_context(interrupts.hold_term())  # a SIGTERM saves a checkpoint before it stops the run
            callbacks = [*callbacks, _SaveOnTerm()]
        trainer = Trainer(model=model, args=training_args(cfg, out, **saving), train_dataset=dataset,
                          data_collator=collator, callbacks=list(callbacks))
        quiet_trainer(trainer, f"{describe(model, 'training')} on {len(texts):,} documents")
        resume, resumed_from = last_checkpoint(checkpoint_dir)
        trainer.train(resume_from_checkpoint=resume)
    model.eval()
    history = trainer.state.log_history
    if resumed_from and history and "train_loss" in history[-1]:
        # the Trainer divides this process's summed loss by all steps; report the mean over the steps it ran
        done = trainer.state.global_step
        history[-1]["train_loss"] *= done / max(done - resumed_from, 1)
    return history
