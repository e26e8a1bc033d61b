"""GRPO on TRL's GRPOTrainer against the environment's flawed grader, plus whatever signal an arm adds."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from trl import GRPOConfig

from alignlab.config import doc
from alignlab.envs import Task
from alignlab.train.fast_grpo import FastGRPOTrainer
from alignlab.train.hardware import resolve_precision
from alignlab.train.lm import quiet_trainer, report_to


@dataclass(frozen=True)
class GRPORunConfig:
    steps: int = doc("GRPO optimizer steps; 25 let the generic exploit take over the tiny organism with nothing to "
                     "stop it", 25)
    learning_rate: float = doc("Adam learning rate (constant schedule)", 1e-3)
    prompts_per_step: int = doc("distinct prompts per step", 8)
    num_generations: int = doc("completions per prompt (the GRPO group)", 8)
    max_completion_length: int = doc("tokens per completion", 48)
    temperature: float = doc("rollout sampling temperature", 1.0)
    beta: float = doc("KL coefficient to the start model (TRL's default 0)", 0.0)
    seed: int = doc("training seed", 0)
    # rollouts by vLLM (GPU, `pip install -e ".[vllm]"`): "colocate" shares the training GPUs, "server" uses
    # `trl vllm-serve`. Probe rewards still read activations from the training model's own forward pass,
    # since the generation engine does not expose them.
    use_vllm: bool = doc("rollouts by vLLM (GPU, the vllm extra); probe rewards still read the training model's "
                         "forward", False)
    vllm_mode: str = doc("'colocate' (shares the training GPUs) or 'server' (trl vllm-serve)", "colocate")
    # "auto": bf16 on a CUDA GPU that supports it, fp32 on a CPU (see train/hardware.py for the measurements);
    # TRL's own default is bf16 everywhere, which an AVX2-only CPU emulates at 6.8x the cost of fp32.
    precision: str = doc("'auto' (bf16 on a bf16 GPU, fp32 on a CPU: TRL's bf16 default is emulated 6.8x slower), "
                         "'bf16' or 'fp32'", "auto")
    # off: the tiny default model needs no activation memory saving, and recomputing the forward pass in the
    # backward costs time (TRL defaults it on)
    gradient_checkpointing: bool = doc("off: the tiny model needs no activation memory saving and recomputation costs "
                                       "time", False)
    # alignlab's FastGRPOTrainer: FastRollout sampling and shared-prefix log-probabilities (train/fast_grpo.py);
    # False: TRL's own generate and forward. vLLM (use_vllm) always samples through TRL.
    fast: bool = doc("FastGRPOTrainer: FastRollout sampling and shared-prefix log-probs; false: TRL's own generate "
                     "and forward", True)


CHAT_INSTRUCTION = ("Write a program in the list language that maps each input to its output. Answer with the "
                    "program only.\n\n")


def chat_prompt(tokenizer, task: Task) -> str:
    """The task as an instruction model's chat turn, rendered to text by the model's own chat template (a string
    prompt, so rewards, probes and sampling treat it like any other). Use as `prompt_of` in `train_grpo`."""
    messages = [{"role": "user", "content": CHAT_INSTRUCTION + task.prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def task_dataset(tasks: list[Task], prompt_of=None) -> Dataset:
    """`prompt_of(task)`: the prompt text the policy sees (default: the task's own prompt)."""
    prompts = [prompt_of(t) if prompt_of else t.prompt for t in tasks]
    return Dataset.from_dict({"prompt": prompts, "task_id": list(range(len(tasks)))})


def grpo_args(cfg: GRPORunConfig, out_dir: str, generation_kwargs: dict | None = None) -> GRPOConfig:
    batch = cfg.prompts_per_step * cfg.num_generations
    bf16 = resolve_precision(cfg.precision) == "bf16"
    return GRPOConfig(
        output_dir=out_dir,
        max_steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=batch,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        beta=cfg.beta,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=10,
        save_strategy="no",
        report_to=report_to(),
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=os.environ.get("ALIGNLAB_QUIET") == "1",
        lr_scheduler_type="constant",
        warmup_steps=0,
        dataloader_num_workers=0,
        generation_kwargs=generation_kwargs,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


def train_grpo(model, tokenizer, tasks: list[Task], reward_funcs: list, cfg: GRPORunConfig,
               trainer_cls=FastGRPOTrainer, trainer_kwargs: dict | None = None, on_trainer=None, prompt_of=None,
               generation_kwargs: dict | None = None) -> list[dict]:
    """Run GRPO in place on `model`. `on_trainer(trainer)` runs before training (e.g. to point a live-policy
    probe reward at `trainer.model`); `prompt_of` and `generation_kwargs` condition the rollouts (e.g. a
    control token, a suppressed token). Returns the log history."""
    kwargs = dict(trainer_kwargs or {})
    if issubclass(trainer_cls, FastGRPOTrainer):
        kwargs.setdefault("fast", cfg.fast and not cfg.use_vllm)
    with tempfile.TemporaryDirectory() as tmp:
        source = getattr(model.config, "_name_or_path", "")
        if cfg.beta and not os.path.isdir(source or "") and not is_peft_model(model):
            # TRL builds the KL reference by reloading the policy from its path; a model trained in memory (the
            # pretraining runs) has none, so the reference is this model as it stands now, saved for TRL to read
            model.save_pretrained(Path(tmp) / "reference")
            model.config._name_or_path = str(Path(tmp) / "reference")
        try:
            trainer = trainer_cls(model=model, reward_funcs=reward_funcs, args=grpo_args(cfg, tmp, generation_kwargs),
                                  train_dataset=task_dataset(tasks, prompt_of), processing_class=tokenizer, **kwargs)
        finally:
            model.config._name_or_path = source
        quiet_trainer(trainer, "GRPO")
        if on_trainer is not None:
            on_trainer(trainer)
        trainer.train()
    # accelerate wrapped the forward in autocast for bf16 training; measurements after training run as the
    # model was built (a bf16 policy beside an fp32 start model would put rounding noise into every comparison)
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    model.eval()
    return trainer.state.log_history
