"""The drop-in path (harvest -> fit_probe -> save/load -> ProbeReward in a plain TRL GRPOTrainer) on a GPT-2
built from a config and on the tiny Llama, and its four traps tested away: a probe without a layer, message-list
prompts, EOS between fitting and scoring, and a model deep-copied after training."""

import copy
import random
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignlab import AlignlabError, LinearProbe, ProbeReward, fit_probe, harvest
from alignlab.envs import HARNESS_OVERRIDE, TaskConfig, generate_task
from alignlab.models import build_tokenizer, own_forward, save_model
from alignlab.probes import fit_logistic

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = Path(__file__).parents[1] / "examples" / "probe_reward_trl.py"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A GPT-2-architecture model built from a config, with the task world's tokenizer, saved as HF does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    rng = random.Random(0)
    tasks = [generate_task(rng, TaskConfig()) for _ in range(300)]
    tok = build_tokenizer([t.prompt + t.solution for t in tasks] + [HARNESS_OVERRIDE] * 20, 400)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    out = tmp_path_factory.mktemp("gpt2") / "model"
    save_model(model, tok, out)
    return out


def _pairs(n: int = 12):
    rng = random.Random(3)
    tasks = [generate_task(rng, TaskConfig()) for _ in range(n)]
    return [(t.prompt, c) for t in tasks for c in (t.solution, HARNESS_OVERRIDE)], np.array([0, 1] * n)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_documented_trl_example_runs_the_whole_path(arch, smoke_organism, gpt2_dir, tmp_path, monkeypatch):
    model = smoke_organism if arch == "llama" else gpt2_dir
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x", "--model", str(model), "--steps", "1"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    probe = LinearProbe.load(tmp_path / "probe")  # fitted by the example on harvest features
    assert probe.layer == 0 and probe.metadata["position"] == "completion" and probe.aggregation == "mean"
    assert (tmp_path / "grpo-probe-reward").is_dir()


def test_a_probe_knows_its_layer_from_the_harvest_or_is_refused_at_fit_time(gpt2_dir):
    from alignlab.models import load_model

    model, tok = load_model(gpt2_dir)
    pairs, y = _pairs()
    feats = harvest(model, tok, pairs, layers=[-1], aggregation="max")
    probe = fit_probe(feats, y)
    assert (probe.layer, probe.aggregation, probe.metadata["n_layers"], probe.metadata["method"]) == (1, "max", 2,
                                                                                                     "logistic")
    with pytest.raises(AlignlabError, match="carry no layer"):
        fit_probe(feats[1].numpy(), y)  # a bare array without metadata: refused here, one line
    bare = fit_logistic(feats[1].numpy(), y)  # the low-level fitter for analysis probes has no layer ...
    with pytest.raises(AlignlabError, match="no integer 'layer'"):
        ProbeReward(bare, tok)  # ... and is refused when built into a reward, not later inside a trainer


def test_fitting_and_scoring_see_the_same_tokens(gpt2_dir):
    """TRL's completion_ids end with EOS; the harvested text never has it: the reward drops it, so a completion
    scores what it scored when the probe was fitted (issue 13 found 5.72 vs 3.78 before, silently)."""
    from alignlab.models import load_model

    model, tok = load_model(gpt2_dir)
    pairs, y = _pairs()
    feats = harvest(model, tok, pairs, layers=[1])
    probe = fit_probe(feats, y)
    fitted = probe.score(feats[1].numpy())
    reward = ProbeReward(probe, tok, model=model)
    ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, c in pairs]
    scored = reward.scores([p for p, _ in pairs], ids)
    assert np.allclose(scored, fitted, atol=1e-4)
    assert np.allclose(reward.scores([p for p, _ in pairs], [i[:-1] for i in ids]), fitted, atol=1e-4)


def test_conversational_prompts_are_rendered_as_trl_renders_them(gpt2_dir):
    from alignlab.models import load_model
    from alignlab.models.batch import encode_prompts

    model, tok = load_model(gpt2_dir)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}{% endif %}")
    pairs, y = _pairs(4)
    probe = fit_probe(harvest(model, tok, pairs, layers=[1]), y)
    reward = ProbeReward(probe, tok, model=model)
    chats = [[{"role": "user", "content": p}] for p, _ in pairs]
    ids = [tok(c, add_special_tokens=False)["input_ids"] for _, c in pairs]
    # TRL 1.16 tokenizes message lists with apply_chat_template(tokenize=True, add_generation_prompt=True)
    want = tok.apply_chat_template(chats, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert encode_prompts(tok, chats) == [list(w) for w in want]
    got = reward(chats, [c for _, c in pairs], ids)
    assert len(got) == len(pairs) and np.allclose(reward.last_scores, reward.scores([p for p, _ in pairs], ids),
                                                  atol=1e-4)  # this template renders each message's content alone


def test_a_model_copied_after_training_is_refused_in_one_line_and_own_forward_repairs_it(smoke_organism, tmp_path):
    """accelerate's mixed-precision wrapper closes over the trained model's forward: a deepcopy of it runs the
    original (a bare `KeyError: 0` from the hooks before)."""
    from trl import GRPOConfig, GRPOTrainer

    from alignlab import GraderReward, load_organism
    from alignlab.train.grpo import task_dataset

    model, tok, _ = load_organism(smoke_organism)
    rng = random.Random(0)
    tasks = [generate_task(rng, TaskConfig()) for _ in range(8)]
    trainer = GRPOTrainer(model=model, reward_funcs=[GraderReward(tasks)], train_dataset=task_dataset(tasks),
                          processing_class=tok,
                          args=GRPOConfig(output_dir=str(tmp_path), max_steps=1, num_generations=2,
                                          per_device_train_batch_size=4, max_completion_length=8, report_to=[],
                                          use_cpu=True, bf16=True, save_strategy="no", disable_tqdm=True))
    trainer.train()
    frozen = copy.deepcopy(model).eval()
    probe = fit_logistic(np.random.default_rng(0).standard_normal((20, model.config.hidden_size)),
                         np.arange(20) % 2, metadata={"layer": 1})
    reward = ProbeReward(probe, tok, model=frozen)
    prompts, ids = [tasks[0].prompt], [tok("reverse", add_special_tokens=False)["input_ids"]]
    with pytest.raises(AlignlabError, match="own_forward") as err:
        reward.scores(prompts, ids)
    assert "\n" not in str(err.value)
    own_forward(frozen)
    copied = reward.scores(prompts, ids)
    original = trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # fp32, as the repaired copy
    assert copied == pytest.approx(ProbeReward(probe, tok, model=original).scores(prompts, ids), abs=1e-4)
