"""Tokens/s of each pretraining objective ÷ a plain HF `Trainer` doing MLE on the same model, data and batch.

Side by side in one run: every round trains each contender for the same number of steps on fresh copies of the
same initial model; a contender's speed is its median step time after a warm-up, and its ratio to plain MLE is
the median over rounds of the per-round ratios. Targets:
MLE ≥ 0.95 and conditional ≥ 0.97 of plain MLE.

    python bench/pretraining_objectives.py [--rounds 3] [--steps 80] [--files 80]   (or: alignlab bench)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from dataclasses import replace

import torch
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback

from alignlab.bench.common import print_result, row
from alignlab.envs.pep8 import Pep8CorpusConfig, load_corpus
from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.train.lm import quiet_trainer
from alignlab.train.objectives import (
    CONTROL_TOKENS,
    OBJECTIVES,
    ObjectiveConfig,
    ObjectiveTrainer,
    PretrainConfig,
    encode_corpus,
    tokenize_docs,
    training_args_for,
)

TARGETS = {"mle": 0.95, "conditional": 0.97}


class _StepClock(TrainerCallback):
    """Wall time of every optimizer step; the median step after warm-up resists the machine's hiccups."""

    def __init__(self):
        self.marks: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter() - self.begin)


def tokens_per_second(trainer, warmup: int, cfg: PretrainConfig) -> float:
    clock = _StepClock()
    trainer.add_callback(clock)
    trainer.train()
    return cfg.batch_size * cfg.block_len / statistics.median(clock.marks[warmup:])


def run(quick: bool = False, rounds: int = 3, steps: int = 80, warmup: int = 10, files: int = 80) -> dict:
    if quick:
        rounds, steps = 2, 40
    corpus = load_corpus(Pep8CorpusConfig(max_files=files))
    tok = build_tokenizer(["".join(t for t, _ in d) for d in corpus.train[::4]], 1024, CONTROL_TOKENS)
    docs = tokenize_docs(tok, corpus.train)
    base = PretrainConfig()  # the study's batch and block length
    cfg = replace(base, tokens=steps * base.batch_size * base.block_len)
    obj_cfg = ObjectiveConfig(rwr_beta=0.02, awr_beta=0.02)
    torch.manual_seed(0)
    init = build_tiny_model(TinyModelConfig(), tok)
    data = {o: encode_corpus(docs, o, obj_cfg, tok, cfg.block_len, seed=0) for o in OBJECTIVES}
    speeds: dict[str, list[float]] = {"plain": [], **{o: [] for o in OBJECTIVES}}
    for r in range(rounds):
        for name in speeds:
            model = copy.deepcopy(init).train()
            if name != "plain" and OBJECTIVES[name].value_head:
                model.add_module("alignlab_value_head", torch.nn.Linear(model.config.hidden_size, 1))
            with tempfile.TemporaryDirectory() as tmp:
                targs = training_args_for(cfg, tmp, seed=r)
                if name == "plain":
                    plain = data["mle"]
                    rows = [{"input_ids": plain.ids[i]} for i in range(len(plain))]
                    targs.remove_unused_columns = True
                    trainer = Trainer(model=model, args=targs, train_dataset=rows,
                                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
                else:
                    trainer = ObjectiveTrainer(model=model, args=targs, train_dataset=data[name], objective=name,
                                               objective_cfg=obj_cfg)
                quiet_trainer(trainer)
                speeds[name].append(tokens_per_second(trainer, warmup, cfg))
    base_speed = statistics.median(speeds["plain"])
    out = []
    for name in OBJECTIVES:
        # paired by round: each ratio compares runs made minutes apart, not across the whole bench
        ratio = statistics.median(o / p for o, p in zip(speeds[name], speeds["plain"], strict=True))
        out.append(row(name, ratio, TARGETS.get(name), f"{statistics.median(speeds[name]):,.0f} tokens/s",
                       higher_is_better=True))
    return {"name": f"pretraining objective tokens/s ÷ plain HF Trainer MLE ({base_speed:,.0f} tokens/s; "
                    f"batch {cfg.batch_size} x {cfg.block_len}, {rounds} rounds x {steps} steps)", "rows": out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--files", type=int, default=80)
    args = parser.parse_args()
    print_result(run(rounds=args.rounds, steps=args.steps, warmup=args.warmup, files=args.files))


if __name__ == "__main__":
    main()
