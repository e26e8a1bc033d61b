"""Probe capture with LoRA adapters (peft) on the policy: the tap finds the wrapped layers, reads the same
activations as the base model while the adapters are zero, and a pathwise probe loss trains only the adapters."""

import pytest
import torch

from alignlab.bench.distributed_check import toy_world
from alignlab.envs import HARNESS_OVERRIDE
from alignlab.models.tap import ActivationTap, aggregate, completion_mask, find_decoder_layers
from alignlab.probes import fit_logistic, harvest
from alignlab.signals import ProbeReward

peft = pytest.importorskip("peft")


@pytest.fixture
def lora_world():
    tasks, tokenizer, base = toy_world()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    policy = peft.get_peft_model(base, config)
    return tasks, tokenizer, base, policy


def test_tap_reads_the_base_activations_through_zero_adapters(lora_world, one_thread):
    tasks, tokenizer, base, policy = lora_world
    assert find_decoder_layers(policy) is find_decoder_layers(base)
    pairs = [(t.prompt, t.solution) for t in tasks[:6]]
    with policy.disable_adapter():
        plain = harvest(policy, tokenizer, pairs, layers=[1])[1]
    wrapped = harvest(policy, tokenizer, pairs, layers=[1])[1]
    assert torch.allclose(plain, wrapped, atol=1e-6)  # LoRA's B starts at zero
    # once the adapters move, the tap sees the adapted policy
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    moved = harvest(policy, tokenizer, pairs, layers=[1])[1]
    assert (moved - plain).abs().max() > 1e-3


def test_probe_reward_and_pathwise_loss_on_a_lora_policy(lora_world, one_thread):
    tasks, tokenizer, base, policy = lora_world
    pairs = [(t.prompt, c) for t in tasks[:40] for c in (t.solution, HARNESS_OVERRIDE)]
    X = harvest(base, tokenizer, pairs, layers=[1])[1].numpy()
    probe = fit_logistic(X, [i % 2 for i in range(len(pairs))], metadata={"layer": 1, "position": "completion"})
    reward = ProbeReward(probe, tokenizer, model=policy, mode="continuous")
    hack = tokenizer(HARNESS_OVERRIDE, add_special_tokens=False)["input_ids"]
    honest = tokenizer(tasks[0].solution, add_special_tokens=False)["input_ids"]
    r_hack, r_honest = reward([tasks[0].prompt] * 2, None, [hack, honest])
    assert r_hack < r_honest  # the probe still reads the wrapped policy
    # pathwise: gradients of the probe logit reach the adapters and nothing else
    prompt = tokenizer(tasks[0].prompt)["input_ids"]
    ids = torch.tensor([prompt + hack])
    mask = torch.ones_like(ids)
    policy.train()
    with ActivationTap(policy, [1], detach=False) as tap:
        policy(input_ids=ids, attention_mask=mask)
    feats = aggregate(tap.activations[1].float(), completion_mask(mask, [len(prompt)]), "mean")
    probe.score(feats).sum().backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().sum() > 0 for g in grads.values())
