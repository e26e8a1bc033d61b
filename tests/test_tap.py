"""ActivationTap against HF's own hidden_states, early exit, gradients, generate; token selection vs loops."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from alignlab import AlignlabError
from alignlab.models.tap import (
    ActivationTap,
    aggregate,
    completion_mask,
    find_decoder_layers,
    last_prompt_mask,
    resolve_layers,
)

V, D = 64, 32
_NO_SPECIAL = dict(bos_token_id=None, eos_token_id=None, pad_token_id=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _llama(n_layers=2):
    config = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=2, **_NO_SPECIAL)
    return LlamaForCausalLM(config)


# name -> (build, path to the layer list, path to the final norm)
ARCHS = {
    "llama": (_llama, "model.layers", "model.norm"),
    "qwen2": (lambda: Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=D, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=4,
                                                   num_key_value_heads=2, **_NO_SPECIAL)),
              "model.layers", "model.norm"),
    "gemma": (lambda: GemmaForCausalLM(GemmaConfig(vocab_size=V, hidden_size=D, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=4,
                                                   num_key_value_heads=1, head_dim=8, **_NO_SPECIAL)),
              "model.layers", "model.norm"),
    "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=4, n_positions=64,
                                                **_NO_SPECIAL)),
             "transformer.h", "transformer.ln_f"),
    "gpt_neox": (lambda: GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=V, hidden_size=D, intermediate_size=64,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          **_NO_SPECIAL)),
                 "gpt_neox.layers", "gpt_neox.final_layer_norm"),
}


def _get(obj, path):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build().eval() for name, (build, _, _) in ARCHS.items()}


@pytest.fixture(scope="module")
def llama3():
    torch.manual_seed(1)
    return _llama(n_layers=3).eval()


def _ids(batch=2, seq=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V, (batch, seq), generator=g)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_find_decoder_layers_known_architectures(models, arch):
    model = models[arch]
    assert find_decoder_layers(model) is _get(model, ARCHS[arch][1])


def test_find_decoder_layers_through_wrappers(models):
    class Inner(nn.Module):  # PEFT's LoraModel keeps the HF model as `.model`
        def __init__(self, model):
            super().__init__()
            self.model = model

    class Peft(nn.Module):  # PeftModel keeps the LoraModel as `.base_model`
        def __init__(self, model):
            super().__init__()
            self.base_model = Inner(model)

    for arch in ("llama", "gpt2", "gpt_neox"):
        assert find_decoder_layers(Peft(models[arch])) is _get(models[arch], ARCHS[arch][1])


def test_find_decoder_layers_generic_fallback_and_failure():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Module()
            self.trunk.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    odd = Odd()
    assert find_decoder_layers(odd) is odd.trunk.blocks
    with pytest.raises(AlignlabError, match="cannot find the decoder layers of Linear"):
        find_decoder_layers(nn.Linear(2, 2))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_tap_matches_hf_hidden_states(models, arch):
    # transformers 5.23: hidden_states[i + 1] is layer i's output, except the last entry, which is the last
    # layer's output after the final norm. The tap gives the raw (pre-norm) residual for every layer.
    model = models[arch]
    ids = _ids()
    with ActivationTap(model, [0, -1]) as tap, torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == 3 and set(tap.activations) == {0, 1}
    assert tap.activations[0].shape == (2, 7, D)
    torch.testing.assert_close(tap.activations[0], hs[1], rtol=0, atol=0)
    last = tap.activations[1]
    assert not torch.allclose(last, hs[-1], atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(_get(model, ARCHS[arch][2])(last), hs[-1], rtol=1e-5, atol=1e-5)


def test_early_exit_skips_later_layers_and_head(llama3):
    calls = {"layer2": 0, "head": 0}

    def counter(key):
        return lambda *args: calls.__setitem__(key, calls[key] + 1)

    h1 = llama3.model.layers[2].register_forward_hook(counter("layer2"))
    h2 = llama3.lm_head.register_forward_hook(counter("head"))
    ids = _ids(seed=3)
    try:
        with torch.no_grad():
            hs = llama3(input_ids=ids, output_hidden_states=True).hidden_states
        calls.update(layer2=0, head=0)
        with ActivationTap(llama3, [1, 0], early_exit=True) as tap, torch.no_grad():
            acts = tap.run(llama3, input_ids=ids)
            assert calls == {"layer2": 0, "head": 0}
            torch.testing.assert_close(acts[0], hs[1], rtol=0, atol=0)
            torch.testing.assert_close(acts[1], hs[2], rtol=0, atol=0)
            # a plain call inside the context runs in full: early exit belongs to run() only
            logits = llama3(input_ids=ids).logits
            assert logits.shape == (2, 7, V) and calls == {"layer2": 1, "head": 1}
        with ActivationTap(llama3, [1]) as tap, torch.no_grad():
            tap.run(input_ids=ids)
            assert calls == {"layer2": 2, "head": 2}
    finally:
        h1.remove()
        h2.remove()


def test_hooks_removed_and_run_outside_context_fails(llama3):
    tap = ActivationTap(llama3, [0])
    before = len(llama3.model.layers[0]._forward_hooks)  # HF installs its own capture hooks lazily
    with tap:
        assert len(llama3.model.layers[0]._forward_hooks) == before + 1
    assert len(llama3.model.layers[0]._forward_hooks) == before
    with pytest.raises(AlignlabError, match="inside its `with` block"):
        tap.run(input_ids=_ids())
    with tap, pytest.raises(AlignlabError, match="different model"):
        tap.run(_llama(), input_ids=_ids())


def test_layer_indices(llama3):
    assert resolve_layers([-1, 0, -3], 3) == [2, 0, 0]
    assert ActivationTap(llama3, [-1, 2, 0]).layers == [0, 2]
    for bad in (3, -4):
        with pytest.raises(AlignlabError, match=f"layer {bad} is out of range for a model with 3 layers"):
            ActivationTap(llama3, [bad])
    with pytest.raises(AlignlabError, match="at least one layer"):
        ActivationTap(llama3, [])


def test_gradients_flow_with_detach_false():
    torch.manual_seed(2)
    model = _llama(n_layers=3).train()
    with ActivationTap(model, [1], detach=False) as tap:
        tap.run(input_ids=_ids())
        tap.activations[1].pow(2).mean().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.layers[0].parameters())
    # layers after the tapped one do not feed the loss
    assert all(p.grad is None for p in model.model.layers[2].parameters())
    with ActivationTap(model, [1]) as tap:
        tap.run(input_ids=_ids())
    assert not tap.activations[1].requires_grad


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_accumulate_during_generate_equals_full_forward(models, arch):
    model = models[arch]
    ids, mask = _ids(seed=5), torch.ones(2, 7, dtype=torch.long)
    ids[0, :3], mask[0, :3] = 0, 0  # left-padded row
    greedy = dict(attention_mask=mask, do_sample=False, pad_token_id=0)
    with ActivationTap(model, [0, 1], accumulate=True) as tap, torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=5, **greedy)
    assert out.shape == (2, 12)
    full_mask = torch.cat([mask, torch.ones(2, 5, dtype=torch.long)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)  # generate numbers positions past the padding too
    with ActivationTap(model, [0, 1]) as full, torch.no_grad():
        full.run(input_ids=out, attention_mask=full_mask, position_ids=positions)
    for layer in (0, 1):
        # the last generated token is never fed back through the model
        assert tap.activations[layer].shape == (2, 11, D)
        expected = full.activations[layer][:, :-1]
        torch.testing.assert_close(tap.activations[layer], expected, rtol=1e-5, atol=1e-5)
    with ActivationTap(model, [0]) as last_only, torch.no_grad():
        model.generate(input_ids=ids, max_new_tokens=3, **greedy)
    assert last_only.activations[0].shape == (2, 1, D)


def test_early_exit_and_accumulate_conflict(llama3):
    with pytest.raises(AlignlabError, match="cannot be combined"):
        ActivationTap(llama3, [0], early_exit=True, accumulate=True)


# --- token selection ---------------------------------------------------------------------------------------


@st.composite
def padded_batches(draw):
    """Rows of n real tokens, p of them prompt (1 <= p < n), padded left or right to a common width."""
    rows = draw(st.lists(st.integers(2, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1))),
                         min_size=1, max_size=5))
    width = max(n for n, _ in rows) + draw(st.integers(0, 2))
    return rows, width, draw(st.sampled_from(["left", "right"]))


def _real_range(n, width, side):
    return range(width - n, width) if side == "left" else range(n)


@settings(max_examples=60, deadline=None)
@given(padded_batches(), st.sampled_from(["mean", "max", "last"]), st.integers(0, 2**16))
def test_completion_selection_matches_loops(batch, how, seed):
    rows, width, side = batch
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (n, _) in enumerate(rows):
        attention[i, list(_real_range(n, width, side))] = 1
    prompt_lengths = [p for _, p in rows]
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(len(rows), width, 4, generator=gen, dtype=torch.float64)
    acts[attention == 0] = float("nan")  # padding garbage must never reach the result

    comp = completion_mask(attention, prompt_lengths)
    last_prompt = last_prompt_mask(attention, torch.tensor(prompt_lengths))
    for i, (n, p) in enumerate(rows):
        real = list(_real_range(n, width, side))
        assert comp[i].nonzero().flatten().tolist() == real[p:]
        assert last_prompt[i].nonzero().flatten().tolist() == [real[p - 1]]
        sel = acts[i, real[p:]]
        expected = {"mean": sel.mean(0), "max": sel.max(0).values, "last": sel[-1]}[how]
        torch.testing.assert_close(aggregate(acts, comp, how)[i], expected)
        torch.testing.assert_close(aggregate(acts, last_prompt, how)[i], acts[i, real[p - 1]])
    # a prompt mask gives the same completion mask as prompt lengths
    prompt_mask = attention.bool() & ~comp
    assert torch.equal(completion_mask(attention, prompt_mask), comp)


def test_aggregate_errors():
    acts = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(AlignlabError, match="row 1 selects no tokens"):
        aggregate(acts, mask)
    with pytest.raises(AlignlabError, match="unknown aggregation 'median'"):
        aggregate(acts, torch.ones(2, 3, dtype=torch.bool), "median")
    with pytest.raises(AlignlabError, match="mask must be"):
        aggregate(acts, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(AlignlabError, match="expected 2 prompt lengths"):
        completion_mask(torch.ones(2, 3), [1, 1, 1])
    with pytest.raises(AlignlabError, match="prompt length must be between 1"):
        last_prompt_mask(torch.ones(2, 3), [0, 1])


def test_aggregate_is_differentiable():
    acts = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.tensor([[False, True, True, False, False], [True, True, True, True, True]])
    aggregate(acts, mask, "mean").sum().backward()
    assert torch.equal(acts.grad[0, :, 0], torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0]))
    assert torch.allclose(acts.grad[1], torch.full((5, 3), 0.2))
