"""Plug alignlab's ProbeReward into your own TRL GRPOTrainer, with any HF causal LM.

    python examples/probe_reward_trl.py --model Qwen/Qwen2.5-0.5B-Instruct --probe runs/my-probe --steps 100

The probe must have been fitted on the same model (same d_model, a layer it has): `alignlab probe fit` writes
one for an organism directory; for a hub model, harvest features with `alignlab.probes.harvest` and fit with
`alignlab.probes.fit_logistic`. The reward reads the *live policy*: `probe_reward.attach(trainer)` after the
trainer is built (with `FastRollout` as the rollout_func, the probe reads the rollout's own activations: no
second forward pass). For a frozen copy, pass `model=copy.deepcopy(policy).eval()` instead. bf16 is used only
where the hardware runs it natively (TRL's default bf16=True is emulated, 6.8x slower, on an AVX2 CPU).
"""

import argparse
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from alignlab.envs import TaskConfig, generate_task
from alignlab.probes import LinearProbe
from alignlab.signals import GraderReward, ProbeReward
from alignlab.train.grpo import task_dataset
from alignlab.train.hardware import bf16_native
from alignlab.train.rollout import FastRollout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="HF model id or local path")
    parser.add_argument("--probe", required=True, help="a directory written by `alignlab probe fit`")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--penalty", type=float, default=1.0)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    policy = AutoModelForCausalLM.from_pretrained(args.model)
    probe = LinearProbe.load(args.probe)
    probe.check_compatible(policy.config.hidden_size, int(probe.metadata["layer"]), policy.config.num_hidden_layers)

    rng = random.Random(0)
    tasks = [generate_task(rng, TaskConfig()) for _ in range(2000)]
    probe_reward = ProbeReward(probe, tokenizer, penalty=args.penalty)  # model set below: the live policy
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[GraderReward(tasks), probe_reward],  # summed by TRL
        args=GRPOConfig(output_dir="grpo-probe-reward", max_steps=args.steps, num_generations=8,
                        per_device_train_batch_size=64, max_completion_length=48, report_to=[],
                        use_cpu=not torch.cuda.is_available(), bf16=bf16_native()),
        train_dataset=task_dataset(tasks),  # columns: prompt, task_id (the rewards look tasks up by task_id)
        processing_class=tokenizer,
        rollout_func=FastRollout(),
    )
    probe_reward.attach(trainer)
    trainer.train()


if __name__ == "__main__":
    main()
