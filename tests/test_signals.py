import random

import numpy as np
import pytest
import torch
from trl import GRPOTrainer

from alignlab.envs import HARNESS_OVERRIDE, TaskConfig, generate_task
from alignlab.organisms.reward_hacker import hardcode_completion
from alignlab.probes import fit_logistic, harvest
from alignlab.signals import GraderReward, MonitorReward, OracleReward, ProbeLossGRPOTrainer, ProbeReward


@pytest.fixture(scope="module")
def tasks():
    rng = random.Random(0)
    return [generate_task(rng, TaskConfig()) for _ in range(40)]


def test_grader_and_oracle_rewards(tasks):
    t = tasks[0]
    completions = [t.solution, HARNESS_OVERRIDE, hardcode_completion(t), "garbage ("]
    ids = [0, 0, 0, 0]
    assert GraderReward(tasks)([t.prompt] * 4, completions, task_id=ids) == [1.0, 1.0, 1.0, 0.0]
    assert OracleReward(tasks, penalty=2.0)([t.prompt] * 4, completions, task_id=ids) == [0.0, -2.0, -2.0, 0.0]


def test_monitor_is_deterministic_with_the_set_rates(tasks):
    prompts, completions, ids = [], [], []
    for i, t in enumerate(tasks):
        for k in range(25):  # distinct texts so the coins differ: hacks and honest programs with padding
            prompts += [t.prompt, t.prompt]
            completions += [HARNESS_OVERRIDE + "\n" * (k % 3) + " " * k, t.solution + " " * k]
            ids += [i, i]
    monitor = MonitorReward(tasks, tpr=0.7, fpr=0.1)
    flags = np.array(monitor.flags(prompts, completions, ids))
    assert flags.tolist() == monitor.flags(prompts, completions, ids)
    assert abs(flags[0::2].mean() - 0.7) < 0.06 and abs(flags[1::2].mean() - 0.1) < 0.04


def test_probe_reward_scores_match_harvested_features(smoke_organism, tasks):
    from alignlab.organisms.reward_hacker import load_organism

    model, tokenizer, _ = load_organism(smoke_organism)
    pairs = [(t.prompt, c) for t in tasks[:20] for c in (t.solution, HARNESS_OVERRIDE)]
    X = harvest(model, tokenizer, pairs, layers=[1], position="completion")[1].numpy()
    y = np.arange(len(pairs)) % 2
    probe = fit_logistic(X, y, metadata={"layer": 1, "position": "completion", "aggregation": "mean"})
    probe.calibrate_threshold(X[y == 0])
    reward = ProbeReward(probe, tokenizer, model=model, penalty=0.5)
    completion_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for _, c in pairs]
    scores = reward.scores([p for p, _ in pairs], completion_ids)
    np.testing.assert_allclose(scores, probe.score(X), atol=1e-4)
    rewards = reward([p for p, _ in pairs], [c for _, c in pairs], completion_ids)
    assert rewards == [-0.5 * (s > probe.threshold) for s in scores]
    assert sum(r < 0 for r in rewards[1::2]) > 15  # the hacks are flagged


def test_probe_loss_hook_point_exists_and_gradients_flow_through_activations(smoke_organism):
    assert callable(getattr(GRPOTrainer, "_compute_loss", None)), "TRL moved the hook point: re-pin or port"
    from datasets import Dataset
    from trl import GRPOConfig

    from alignlab.organisms.reward_hacker import load_organism

    model, tokenizer, _ = load_organism(smoke_organism)
    d = model.config.hidden_size
    rng = np.random.default_rng(0)
    probe = fit_logistic(rng.standard_normal((40, d)), np.arange(40) % 2, metadata={"layer": 0})
    args = GRPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=4, num_generations=4, use_cpu=True,
                      report_to=[], max_completion_length=8)
    trainer = ProbeLossGRPOTrainer(model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                                   args=args, train_dataset=Dataset.from_dict({"prompt": ["in [1] out [1]\n"] * 4}),
                                   processing_class=tokenizer, probe=probe, probe_lambda=3.0, term="logit")
    prompt = torch.tensor([[5, 6, 7], [5, 6, 7]])
    completion = torch.tensor([[8, 9, 0], [8, 0, 0]])
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]), "advantages": torch.zeros(2),
              "num_items_in_batch": torch.tensor(5.0)}
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); we call the loss directly
    loss = trainer._compute_loss(trainer.model, inputs)
    base = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    assert float(loss - base) == pytest.approx(3.0 * trainer.last_probe_logit, abs=1e-4)
    loss.backward()
    emb = trainer.model.get_input_embeddings().weight.grad
    assert emb is not None and emb.abs().sum() > 0  # zero advantages: only the probe term has a gradient


def test_the_documented_trl_example_runs(smoke_organism, tmp_path, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    d = 64
    rng = np.random.default_rng(0)
    fit_logistic(rng.standard_normal((40, d)), np.arange(40) % 2,
                 metadata={"layer": 0, "position": "completion"}).save(tmp_path / "probe")
    example = Path(__file__).parents[1] / "examples" / "probe_reward_trl.py"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x", "--model", str(smoke_organism), "--probe", str(tmp_path / "probe"),
                                      "--steps", "1"])
    runpy.run_path(str(example), run_name="__main__")
    assert (tmp_path / "grpo-probe-reward").is_dir()


def test_probe_loss_is_the_same_through_the_shared_prefix_forward(smoke_organism):
    """The pathwise term reads the same completion activations whether TRL's forward or the shared-prefix one
    ran: equal loss and probe logit, prompts repeated as GRPO repeats them."""
    import copy

    from datasets import Dataset
    from trl import GRPOConfig

    from alignlab.organisms.reward_hacker import load_organism

    model, tokenizer, _ = load_organism(smoke_organism)
    rng = np.random.default_rng(0)
    probe = fit_logistic(rng.standard_normal((40, model.config.hidden_size)), np.arange(40) % 2,
                         metadata={"layer": 1})
    prompt = torch.tensor([[1, 5, 6, 7], [1, 5, 6, 7], [3, 9, 9, 9], [3, 9, 9, 9]])
    prompt_mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    completion = torch.tensor([[8, 9, 0, 1], [8, 0, 1, 1], [4, 4, 4, 0], [0, 1, 1, 1]])
    inputs = {"prompt_ids": prompt, "prompt_mask": prompt_mask, "completion_ids": completion,
              "completion_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]),
              "advantages": torch.tensor([0.5, -0.5, 1.0, -1.0]), "num_items_in_batch": torch.tensor(10.0)}
    out = {}
    for fast in (False, True):
        args = GRPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=4, num_generations=2,
                          use_cpu=True, report_to=[], max_completion_length=4, bf16=False,
                          gradient_checkpointing=False)
        trainer = ProbeLossGRPOTrainer(model=copy.deepcopy(model), reward_funcs=[lambda completions, **_: [0.0]],
                                       args=args, train_dataset=Dataset.from_dict({"prompt": ["x"] * 4}),
                                       processing_class=tokenizer, probe=probe, probe_lambda=2.0, fast=fast)
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.train()
        loss = trainer._compute_loss(trainer.model, inputs)
        out[fast] = (float(loss.detach()), trainer.last_probe_logit)
    assert out[True] == pytest.approx(out[False], abs=1e-5)
