"""The fast sampler against HF `generate`, FastRollout inside TRL, rollout-borne probe scores, precision choice."""

import copy
import random
from collections import Counter

import numpy as np
import pytest
import torch

from alignlab.envs import HARNESS_OVERRIDE, TaskConfig, generate_task
from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.models.sampling import generate_ids
from alignlab.models.tap import ActivationTap
from alignlab.probes import fit_logistic, harvest
from alignlab.signals import GraderReward, ProbeReward
from alignlab.train import hardware
from alignlab.train.grpo import GRPORunConfig, grpo_args, train_grpo
from alignlab.train.rollout import ROLLOUT_ACTIVATIONS, FastRollout


@pytest.fixture(scope="module")
def tasks():
    rng = random.Random(0)
    return [generate_task(rng, TaskConfig()) for _ in range(60)]


@pytest.fixture(scope="module")
def tiny(tasks, one_thread):
    tokenizer = build_tokenizer([t.prompt + t.solution for t in tasks] + [HARNESS_OVERRIDE] * 5)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(d_model=64, n_layers=2, n_heads=2, d_ff=128), tokenizer).eval()
    return model, tokenizer


def _hf(model, tokenizer, prompts, temperature, max_new_tokens, seed, **kw):
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, do_sample=temperature > 0, temperature=temperature or None, top_k=0, top_p=1.0,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=kw.pop("eos_token_id", tokenizer.eos_token_id), **kw)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def _ours(model, tokenizer, prompts, temperature, max_new_tokens, seed, **kw):
    torch.manual_seed(seed)
    return generate_ids(model, tokenizer(prompts)["input_ids"], max_new_tokens=max_new_tokens,
                        eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id,
                        temperature=temperature, **kw)


@pytest.mark.parametrize("suppress", [None, list(range(5, 60))])
def test_greedy_gives_the_same_tokens_as_hf_generate(tiny, tasks, suppress):
    """Ragged prompts (left padding), repeated prompts (a shared prefill), rows finishing at different steps
    (dropped from the batch): the same tokens as HF generate, suppressed tokens never produced."""
    model, tokenizer = tiny
    prompts = [t.prompt for t in tasks[:10]] + [tasks[0].prompt[:9]] + [tasks[1].prompt] * 3
    kw = {"suppress_tokens": suppress} if suppress else {}
    hf = _hf(model, tokenizer, prompts, 0.0, 20, seed=5, **kw)
    ours = _ours(model, tokenizer, prompts, 0.0, 20, seed=5, suppress_ids=suppress).completion_ids
    for h, c in zip(hf, ours, strict=True):
        assert 1 <= len(c) <= 20
        assert h[:len(c)] == c
        assert all(t == tokenizer.pad_token_id for t in h[len(c):])  # HF pads after EOS, we stop there
        assert c[-1] == tokenizer.eos_token_id or len(c) == 20
        assert not set(c) & set(suppress or [])


@pytest.fixture(scope="module")
def chaotic(tiny):
    """The tiny model with its weights ×10: an untrained model at init scale repeats one token forever, so no row
    ever stops; this one writes varied tokens, and the three it writes most often serve as stop tokens."""
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(10)
    return model, tokenizer


@pytest.mark.parametrize("suppress", [None, list(range(5, 60))])
def test_greedy_rows_stopping_at_different_steps_match_hf_generate(chaotic, tasks, suppress):
    """Rows that stop early are dropped from our batch (and their cache rows reordered); HF keeps them, padded:
    the same tokens either way, and the rows really do stop at different steps."""
    model, tokenizer = chaotic
    prompts = [t.prompt for t in tasks[:10]] + [tasks[0].prompt[:9]] + [tasks[1].prompt] * 3
    free = _ours(model, tokenizer, prompts, 0.0, 20, seed=5, suppress_ids=suppress).completion_ids
    stops = [t for t, _ in Counter(t for row in free for t in row).most_common(3)]
    kw = {"suppress_tokens": suppress} if suppress else {}
    hf = _hf(model, tokenizer, prompts, 0.0, 20, seed=5, eos_token_id=stops, **kw)
    torch.manual_seed(5)
    ours = generate_ids(model, tokenizer(prompts)["input_ids"], max_new_tokens=20, eos_token_ids=stops,
                        pad_token_id=tokenizer.pad_token_id, temperature=0.0, suppress_ids=suppress).completion_ids
    lengths = [len(c) for c in ours]
    assert len(set(lengths)) >= 4 and min(lengths) < 10 and 20 in lengths, lengths  # stops early, at varied steps
    for h, c in zip(hf, ours, strict=True):
        assert h[:len(c)] == c
        assert all(t == tokenizer.pad_token_id for t in h[len(c):])
        assert c[-1] in stops or len(c) == 20
        assert not set(c[:-1]) & set(stops)  # stopped at the first stop token


def test_sampling_is_seeded(tiny, tasks):
    model, tokenizer = tiny
    prompts = [t.prompt for t in tasks[:4] for _ in range(4)]
    a, b = (_ours(model, tokenizer, prompts, 1.0, 16, seed=3).completion_ids for _ in range(2))
    c = _ours(model, tokenizer, prompts, 1.0, 16, seed=4).completion_ids
    assert a == b and a != c


def test_logprobs_are_the_models_own(tiny, tasks):
    """Recorded log-probabilities equal a teacher-forced forward pass over the sampled tokens (at T=1)."""
    model, tokenizer = tiny
    prompts = [t.prompt for t in tasks[:6]]
    out = _ours(model, tokenizer, prompts, 1.0, 12, seed=0)
    for prompt, ids, logps in zip(prompts, out.completion_ids, out.logprobs, strict=True):
        p = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([p + ids])).logits[0, len(p) - 1:-1]
        ref = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(ids)[:, None])[:, 0]
        np.testing.assert_allclose(logps, ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_follows_the_model_distribution(tiny, tasks, temperature):
    """Token frequencies over many draws match softmax(logits / T), at the first token and at the second given
    the most frequent first one, within four standard errors."""
    model, tokenizer = tiny
    prompt = tokenizer(tasks[0].prompt)["input_ids"]
    out = _ours(model, tokenizer, [tasks[0].prompt] * 4000, temperature, 2, seed=11)
    first = np.array([c[0] for c in out.completion_ids])
    top_first = np.bincount(first).argmax()
    for context, draws in (([], first), ([int(top_first)], np.array([c[1] for c in out.completion_ids
                                                                    if c[0] == top_first and len(c) > 1]))):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + context])).logits[0, -1].float()
        probs = torch.softmax(logits / temperature, -1).numpy()
        counts = np.bincount(draws, minlength=len(probs)) / len(draws)
        top = np.argsort(probs)[-5:]
        bound = 4 * np.sqrt(probs[top] * (1 - probs[top]) / len(draws)) + 1e-3
        assert np.all(np.abs(counts[top] - probs[top]) <= bound), (counts[top], probs[top])


def test_captured_activations_equal_a_full_forward(tiny, tasks):
    model, tokenizer = tiny
    prompts = [t.prompt for t in tasks[:5]]
    out = _ours(model, tokenizer, prompts, 1.0, 10, seed=3, capture_layers=[0, -1])
    assert set(out.activations) == {0, 1}
    for i, (prompt, ids) in enumerate(zip(prompts, out.completion_ids, strict=True)):
        p = tokenizer(prompt)["input_ids"]
        with ActivationTap(model, [0, 1]) as tap:
            acts = tap.run(input_ids=torch.tensor([p + ids]))
        for layer in (0, 1):
            got = out.activations[layer][i]
            assert got.shape == (len(ids), model.config.hidden_size)
            torch.testing.assert_close(got, acts[layer][0, len(p):].float(), atol=1e-4, rtol=1e-4)


def _probe(model, tokenizer, tasks, layer=1):
    pairs = [(t.prompt, c) for t in tasks[:20] for c in (t.solution, HARNESS_OVERRIDE)]
    X = harvest(model, tokenizer, pairs, layers=[layer])[layer].numpy()
    probe = fit_logistic(X, np.arange(len(pairs)) % 2, metadata={"layer": layer, "position": "completion"})
    probe.calibrate_threshold(X[::2])
    return probe


def test_probe_reward_scores_ride_on_the_rollout(tiny, tasks):
    """Inside a real GRPO run: the rollout-borne scores equal a second forward pass of the same weights over the
    same tokens (rewards are computed before the step's update)."""
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    probe = _probe(model, tokenizer, tasks)
    reward = ProbeReward(probe, tokenizer)
    checked = []

    def spy(prompts, completions, completion_ids, **columns):
        assert len(columns[ROLLOUT_ACTIVATIONS]) == len(prompts)
        np.testing.assert_allclose(reward.last_scores, reward.scores(prompts, completion_ids), atol=1e-4)
        checked.append(len(prompts))
        return [0.0] * len(prompts)

    cfg = GRPORunConfig(steps=2, prompts_per_step=2, num_generations=4, max_completion_length=12,
                        learning_rate=1e-2)
    train_grpo(model, tokenizer, tasks, [GraderReward(tasks), reward, spy], cfg, on_trainer=reward.attach)
    assert reward.from_rollout and checked == [8, 8]


def test_fast_rollout_refuses_settings_it_does_not_implement(tiny, tasks, tmp_path):
    model, tokenizer = tiny
    from trl import GRPOTrainer

    from alignlab import AlignlabError
    from alignlab.train.grpo import task_dataset

    args = grpo_args(GRPORunConfig(steps=1, prompts_per_step=2, num_generations=2, max_completion_length=4),
                     str(tmp_path))
    args.top_p = 0.9
    trainer = GRPOTrainer(model=copy.deepcopy(model), reward_funcs=[GraderReward(tasks)], args=args,
                          train_dataset=task_dataset(tasks), processing_class=tokenizer, rollout_func=FastRollout())
    with pytest.raises(AlignlabError, match="top_p"):
        trainer.rollout_func(["in [1] out [1]\nprogram:\n"], trainer)


def test_precision_follows_the_hardware(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    assert not hardware.bf16_native() and hardware.resolve_precision("auto") == "fp32"
    args = grpo_args(GRPORunConfig(), str(tmp_path))
    assert not args.bf16 and not args.gradient_checkpointing  # TRL's own defaults would be True and True
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported", lambda: True)
    assert hardware.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported", lambda: False)
    assert hardware.resolve_precision("auto") == "fp32"
    assert hardware.resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        hardware.resolve_precision("fp8")


def _trl_batch(tokenizer, tasks, completions_per_prompt=3):
    """A GRPO-shaped batch: prompts left-padded, each repeated, completions of different lengths right-padded."""
    from trl.trainer.utils import pad

    rows_p, rows_c = [], []
    for t in tasks[:4]:
        for k in range(completions_per_prompt):
            rows_p.append(torch.tensor(tokenizer(t.prompt)["input_ids"]))
            text = [t.solution, HARNESS_OVERRIDE, t.solution + "\n" + t.solution][k % 3]
            rows_c.append(torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]
                                       + [tokenizer.eos_token_id]))
    p = pad(rows_p, padding_value=tokenizer.pad_token_id, padding_side="left")
    pm = pad([torch.ones_like(r) for r in rows_p], padding_value=0, padding_side="left")
    c = pad(rows_c, padding_value=tokenizer.pad_token_id, padding_side="right")
    cm = pad([torch.ones_like(r) for r in rows_c], padding_value=0, padding_side="right")
    return torch.cat([p, c], 1), torch.cat([pm, cm], 1), c.shape[1]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prefix_logps_equal_trls_forward(tiny, tasks, arch, tmp_path):
    """Same log-probabilities, entropies and gradients as TRL's own (fused-head) forward, to float rounding."""
    from trl import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    from alignlab.train.fast_grpo import shared_prefix_logps

    model, tokenizer = tiny
    if arch == "gpt2":  # learnt absolute positions: equal only if positions are TRL's, not shifted
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                           n_positions=256)).eval()
    model = copy.deepcopy(model)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    ids, mask, n_completion = _trl_batch(tokenizer, tasks)

    class Host:  # the bits of a trainer TRL's method reads
        accelerator = type("A", (), {"autocast": staticmethod(lambda: torch.autocast("cpu", enabled=False)),
                                     "is_main_process": True})()

    ref, ref_ent, _ = GRPOTrainer._get_per_token_logps_and_entropies(Host(), model, ids, mask, n_completion,
                                                                      compute_entropy=True)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got, ent = shared_prefix_logps(model, ids, mask, n_completion, temperature=0.7, compute_entropy=True)
    got.sum().backward()
    assert got.shape == ref.shape == (len(ids), n_completion)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    for g, r in zip((p.grad for p in model.parameters()), ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_fast_trainer_keeps_trls_hook_points():
    from trl import GRPOTrainer

    assert callable(getattr(GRPOTrainer, "_get_per_token_logps_and_entropies", None))
    import inspect

    assert "rollout_func" in inspect.signature(GRPOTrainer.__init__).parameters


def test_a_trained_policy_is_measured_without_the_bf16_autocast_wrapper(tiny, tasks):
    model = copy.deepcopy(tiny[0])
    cfg = GRPORunConfig(steps=1, prompts_per_step=2, num_generations=2, max_completion_length=4, precision="bf16")
    train_grpo(model, tiny[1], tasks, [GraderReward(tasks)], cfg)
    assert "_original_forward" not in model.__dict__
    with torch.no_grad():
        assert model(torch.tensor([[2, 3, 4]])).logits.dtype == torch.float32
