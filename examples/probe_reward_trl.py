"""Plug alignlab's ProbeReward into your own TRL GRPOTrainer, with any HF causal LM (Llama, Qwen2, GPT-2, ...).

    python examples/probe_reward_trl.py --model Qwen/Qwen2.5-0.5B-Instruct --steps 100
    python examples/probe_reward_trl.py --model runs/reward-hacker --probe runs/my-probe --steps 100

The whole drop-in path: harvest a model's activations on labelled (prompt, completion) pairs, fit a probe with
`fit_probe` (it records the layer and pooling it was fitted on), save and load it, then reward the live policy
with it. Without `--probe` the probe is fitted here, on the task world's written-out completions (the target
program vs the two grader hacks, teacher-forced); `alignlab probe fit` writes one from an organism's own samples.
`probe_reward.attach(trainer)` after the trainer is built points the reward at the live policy (with
`FastRollout` as the rollout_func, the probe reads the rollout's own activations: no second forward pass). For a
frozen copy, pass `model=copy.deepcopy(policy).eval()` *before* training instead. bf16 is used only where the
hardware runs it natively (TRL's default bf16=True is emulated, 6.8x slower, on an AVX2 CPU).
"""

import argparse
import random

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from alignlab import GraderReward, LinearProbe, ProbeReward, fit_probe, harvest
from alignlab.envs import HARNESS_OVERRIDE, TaskConfig, generate_task
from alignlab.organisms.reward_hacker import hardcode_completion
from alignlab.train.grpo import task_dataset
from alignlab.train.hardware import bf16_native
from alignlab.train.rollout import FastRollout


def fit_task_probe(policy, tokenizer, layer: int, n_tasks: int = 64):
    """A hack-vs-honest probe on written-out completions of fresh tasks, threshold at 1% FPR."""
    rng = random.Random(1)
    tasks = [generate_task(rng, TaskConfig()) for _ in range(n_tasks)]
    pairs = [(t.prompt, c) for t in tasks for c in (t.solution, HARNESS_OVERRIDE, hardcode_completion(t))]
    labels = np.array([0, 1, 1] * n_tasks)
    features = harvest(policy, tokenizer, pairs, layers=[layer])  # knows its layer, position and pooling
    return fit_probe(features, labels, fpr=0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="HF model id or local path")
    parser.add_argument("--probe", help="a directory written by `alignlab probe fit` (default: fit one here)")
    parser.add_argument("--layer", type=int, default=-2, help="decoder layer of a probe fitted here")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--penalty", type=float, default=1.0)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(args.model)
    if args.probe is None:
        fit_task_probe(policy, tokenizer, args.layer).save("probe")
        args.probe = "probe"
    probe = LinearProbe.load(args.probe)
    probe.check_compatible(policy.config.hidden_size, probe.layer, policy.config.num_hidden_layers)

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
    print(f"probe scores of the last batch: mean {np.mean(probe_reward.last_scores):.3f}")


if __name__ == "__main__":
    main()
