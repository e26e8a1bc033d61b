"""Steering: exact residual arithmetic at the hooked layer, ablation, hook lifetime, KV-cache generation vs one
full pass, a planted behaviour curve, probe and diff-of-means directions, and the errors."""

from contextlib import ExitStack

import numpy as np
import pytest
import torch
from torch import nn

from alignlab import AlignlabError
from alignlab.audit.steering import (
    SteeringConfig,
    as_direction,
    diff_of_means_direction,
    direction_from_probe,
    plot_steering_curve,
    steer,
    steering_curve,
    wilson_interval,
)
from alignlab.models.sampling import sample
from alignlab.models.tap import ActivationTap, find_decoder_layers
from alignlab.models.tiny import TinyModelConfig, build_tiny_model, build_tokenizer
from alignlab.probes.probe import LinearProbe

pytestmark = pytest.mark.usefixtures("one_thread")

D = 32
PROMPTS = ["def f1(x):", "x + 3", "y_2", "def"]


@pytest.fixture(scope="module")
def tok():
    texts = [f"def f{i}(x):\n    return x + {i * 7 % 13} * y_{i % 5}\n" for i in range(200)]
    return build_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return build_tiny_model(TinyModelConfig(d_model=D, n_layers=2, n_heads=2, d_ff=64), tok).eval()


@pytest.fixture(scope="module")
def batch(tok):
    return tok(PROMPTS[:2], return_tensors="pt", padding=True)


@pytest.fixture(scope="module")
def return_id(tok):
    (token,) = tok.tokenize(" return")
    return tok.convert_tokens_to_ids(token)


def _direction(seed=1):
    return torch.randn(D, generator=torch.Generator().manual_seed(seed))


def _tap(model, layer, batch, **steering):
    """The residual output of `layer` (and of the last layer), steered as asked or not at all."""
    with torch.no_grad(), ActivationTap(model, [layer, -1]) as tap:
        if steering:
            with steer(model, layer, **steering):
                model(**batch)
        else:
            model(**batch)
    return tap.activations[layer], tap.activations[1]


# --- the arithmetic at the steered layer ---------------------------------------------------------------------


@pytest.mark.parametrize("tap_first", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_add_is_exact_at_the_steered_layer_whatever_the_hook_order(model, batch, tap_first, normalize):
    d, m = _direction(), 3.0
    base, base_last = _tap(model, 0, batch)
    tap = ActivationTap(model, [0, 1])
    hooks = [tap, steer(model, 0, d, m, normalize=normalize)]
    # steering is prepended: a tap whose hook was registered first still reads the steered stream
    with torch.no_grad(), ExitStack() as stack:
        for hook in hooks if tap_first else hooks[::-1]:
            stack.enter_context(hook)
        model(**batch)
    u = d / d.norm() if normalize else d
    assert torch.equal(tap.activations[0], base + m * u)
    assert not torch.allclose(tap.activations[1], base_last, atol=1e-3)  # and the next layer feels it


def test_steering_at_layer_one_leaves_layer_zero_alone(model, batch):
    with torch.no_grad(), ActivationTap(model, [0, 1]) as tap:
        model(**batch)
        before = dict(tap.activations)
        with steer(model, 1, _direction(), 2.0):
            model(**batch)
    assert torch.equal(tap.activations[0], before[0])
    assert torch.equal(tap.activations[1], before[1] + 2.0 * _direction() / _direction().norm())


def test_ablation_leaves_no_component_and_multiplier_scales_the_removal(model, batch):
    base, _ = _tap(model, 0, batch)
    u = base.mean((0, 1))
    u = u / u.norm()  # a direction the residual really has a component along
    proj = base @ u
    assert proj.abs().max() > 0.01
    ablated, _ = _tap(model, 0, batch, direction=u, mode="ablate")
    assert (ablated @ u).abs().max() < 1e-6
    torch.testing.assert_close(ablated, base - proj[..., None] * u, atol=1e-6, rtol=0)
    reflected, _ = _tap(model, 0, batch, direction=u, mode="ablate", multiplier=2.0)
    torch.testing.assert_close(reflected @ u, -proj, atol=1e-6, rtol=0)
    untouched, _ = _tap(model, 0, batch, direction=u, mode="ablate", multiplier=0.0)
    assert torch.equal(untouched, base)


def test_new_positions_in_one_pass_steer_only_the_last_position(model, batch):
    d = _direction()
    base, _ = _tap(model, 0, batch)
    steered, _ = _tap(model, 0, batch, direction=d, multiplier=2.0, positions="new")
    assert torch.equal(steered[:, :-1], base[:, :-1])
    assert torch.equal(steered[:, -1], base[:, -1] + 2.0 * d / d.norm())


class _TupleBlock(nn.Module):
    def forward(self, x):
        return x * 2, "extra"


class _TupleModel(nn.Module):
    """No config, layers that return tuples: the hook must keep the tuple and check sizes itself."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([_TupleBlock(), _TupleBlock()])

    def forward(self, x):
        for block in self.model.layers:
            x = block(x)[0]
        return x


def test_tuple_outputs_are_kept_and_sizes_checked_at_run_time():
    toy, x = _TupleModel(), torch.ones(1, 3, 4)
    u = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with steer(toy, 0, u, 5.0):
        out, extra = toy.model.layers[0](x)
        assert extra == "extra"
        assert torch.equal(out, 2 * x + 5 * u)
        assert torch.equal(toy(x), 2 * (2 * x + 5 * u))
    with pytest.raises(AlignlabError, match="direction has size 3"), steer(toy, 0, torch.ones(3)):
        toy(x)


# --- hook lifetime ---------------------------------------------------------------------------------------------


def _n_hooks(model):
    block = find_decoder_layers(model)
    return sum(len(b._forward_hooks) + len(b._forward_pre_hooks) for b in block)


def test_hooks_are_removed_after_the_block_and_after_an_exception(model, batch):
    base, _ = _tap(model, 0, batch)
    assert _n_hooks(model) == 0
    with steer(model, 0, _direction(), 4.0, positions="new") as s:
        assert _n_hooks(model) == 2  # the steering hook + the cache-length pre-hook on layer 0
        with pytest.raises(AlignlabError, match="already attached"), s:
            pass
    assert _n_hooks(model) == 0
    with pytest.raises(ValueError, match="boom"), steer(model, 0, _direction(), 4.0):
        assert _n_hooks(model) == 1
        raise ValueError("boom")
    assert _n_hooks(model) == 0
    assert torch.equal(_tap(model, 0, batch)[0], base)


# --- generation -------------------------------------------------------------------------------------------------


def test_multiplier_zero_gives_identical_samples_and_a_large_one_does_not(model, tok):
    kwargs = dict(n_per_prompt=3, temperature=1.0, max_new_tokens=8, seed=5)
    plain = sample(model, tok, PROMPTS, **kwargs)
    with steer(model, -1, _direction(), 0.0):
        zero = sample(model, tok, PROMPTS, **kwargs)
    with steer(model, -1, _direction(), 1.0):
        large = sample(model, tok, PROMPTS, **kwargs)
    assert zero == plain
    assert large != plain


def _generate(model, batch, n_new=6):
    with torch.no_grad():
        return model.generate(**batch, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                              return_dict_in_generate=True, output_logits=True)


def _full_pass_last_logits(model, batch, sequences, hook=None, layer=0):
    """Logits at the last position of one uncached pass over prompt + generated tokens (bar the last)."""
    seq = sequences[:, :-1]
    mask = torch.cat([batch["attention_mask"], torch.ones_like(seq[:, batch["input_ids"].shape[1]:])], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate derives them for left padding
    handle = find_decoder_layers(model)[layer].register_forward_hook(hook) if hook else None
    try:
        with torch.no_grad():
            return model(input_ids=seq, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1]
    finally:
        if handle:
            handle.remove()


def test_cached_generation_is_steered_token_by_token_like_one_full_pass(model, batch, return_id):
    u, m = model.lm_head.weight[return_id].detach(), 0.5
    plain = _generate(model, batch)
    torch.testing.assert_close(_full_pass_last_logits(model, batch, plain.sequences), plain.logits[-1],
                               atol=1e-5, rtol=1e-4)  # sanity: cache and full pass agree unsteered
    with steer(model, -1, u, m) as s:
        steered = _generate(model, batch)
        assert s.n_calls == 6  # the prompt, then each new token but the last, fed one by one through the cache
        full = _full_pass_last_logits(model, batch, steered.sequences)
    new = steered.sequences[:, batch["input_ids"].shape[1]:]
    assert (new == return_id).float().mean() > 0.8
    assert not torch.equal(new, plain.sequences[:, batch["input_ids"].shape[1]:])
    torch.testing.assert_close(full, steered.logits[-1], atol=1e-5, rtol=1e-4)
    assert (_full_pass_last_logits(model, batch, steered.sequences) - steered.logits[-1]).abs().max() > 1e-2


def test_new_positions_during_generation_match_steering_from_the_last_prompt_token(model, batch):
    u, m = _direction(), 0.3  # at layer 0, so that steering prompt positions would reach the last one
    u = u / u.norm()
    start = batch["input_ids"].shape[1] - 1  # left padding: the last prompt token sits here in every row

    def from_last_prompt_token(module, args, output):
        out = output.clone()
        out[:, start:] += m * u
        return out

    with steer(model, 0, u, m, positions="new"):
        steered = _generate(model, batch)
    expected = _full_pass_last_logits(model, batch, steered.sequences, hook=from_last_prompt_token)
    torch.testing.assert_close(expected, steered.logits[-1], atol=1e-5, rtol=1e-4)
    with steer(model, 0, u, m, positions="all"):  # steering the prompt too is a different intervention
        everywhere = _full_pass_last_logits(model, batch, steered.sequences)
    assert (everywhere - steered.logits[-1]).abs().max() > 1e-3


def test_new_positions_steer_every_token_fed_on_top_of_a_cache(model, batch):
    """Several tokens fed at once over a filled cache (chunked prefill, assisted decoding) are all new."""
    u, m = _direction(), 0.3
    u = u / u.norm()
    prompt_len = batch["input_ids"].shape[1]
    extra = torch.tensor([[5, 6, 7], [8, 9, 10]])
    seq = torch.cat([batch["input_ids"], extra], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(extra)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), steer(model, 0, u, m, positions="new"):
        first = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=positions[:, :prompt_len], use_cache=True)
        chunk = model(input_ids=extra, attention_mask=mask, position_ids=positions[:, prompt_len:],
                      past_key_values=first.past_key_values, use_cache=True).logits

    def from_last_prompt_token(module, args, output):
        out = output.clone()
        out[:, prompt_len - 1:] += m * u
        return out

    handle = find_decoder_layers(model)[0].register_forward_hook(from_last_prompt_token)
    try:
        with torch.no_grad():
            full = model(input_ids=seq, attention_mask=mask, position_ids=positions, use_cache=False).logits
    finally:
        handle.remove()
    torch.testing.assert_close(chunk, full[:, prompt_len:], atol=1e-5, rtol=1e-4)


# --- the behaviour curve ------------------------------------------------------------------------------------------


def test_steering_curve_rate_rises_with_the_multiplier_on_a_planted_behaviour(model, tok, return_id, tmp_path):
    """Steering the last layer along the unembedding row of ' return' makes ' return' ever more likely."""
    u = model.lm_head.weight[return_id].detach()
    cfg = SteeringConfig(layer=-1, multipliers=(-0.2, 0.0, 0.05, 0.1, 0.2, 0.5), n_per_prompt=8, temperature=0.1,
                         max_new_tokens=8, seed=0)
    calls = []

    def says_return(i, text):
        calls.append(i)
        return "return" in text

    curve = steering_curve(model, tok, PROMPTS, u, cfg, says_return)
    rates = [r["rate"] for r in curve]
    assert [r["multiplier"] for r in curve] == list(cfg.multipliers)
    assert rates == sorted(rates), rates
    assert rates[1] <= 0.2 and rates[-1] >= 0.8, rates
    assert sorted(calls) == sorted(list(range(len(PROMPTS))) * 8 * len(cfg.multipliers))
    for r in curve:
        assert r["n"] == 32 and r["hits"] == round(r["rate"] * 32)
        assert 0 <= r["ci_low"] <= r["rate"] <= r["ci_high"] <= 1
    assert steering_curve(model, tok, PROMPTS, u, cfg, says_return) == curve  # seeded
    plot_steering_curve({"unembed ' return'": curve, "reversed": curve[::-1]}, tmp_path / "curve.png", "t")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(AlignlabError, match="behaviour must return a bool"):
        steering_curve(model, tok, PROMPTS[:1], u, cfg, lambda i, text: None)


def test_wilson_interval():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.25 < high < 0.35  # 0.278 for 0/10
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    with pytest.raises(AlignlabError, match="n >= 1"):
        wilson_interval(0, 0)


# --- directions -----------------------------------------------------------------------------------------------------


def test_direction_from_probe_is_the_score_gradient_in_raw_space(model, batch):
    rng = np.random.default_rng(0)
    w, scale, mean = rng.normal(size=D), rng.uniform(0.1, 3.0, size=D), rng.normal(size=D)
    probe = LinearProbe(direction=w, bias=0.3, mean=mean, scale=scale)
    d = direction_from_probe(probe)
    x = torch.randn(5, D, requires_grad=True)
    probe.score(x).sum().backward()
    torch.testing.assert_close(x.grad, d.expand(5, D))
    # round trip: a probe whose standardised direction is v * scale points along v in raw space
    v = rng.normal(size=D)
    torch.testing.assert_close(direction_from_probe(LinearProbe(v * scale, 0.0, mean, scale)),
                               torch.as_tensor(v, dtype=torch.float32))
    # steering t along it raises the probe's score on the model's residual by exactly t · |d|
    base, _ = _tap(model, 0, batch)
    steered, _ = _tap(model, 0, batch, direction=d, multiplier=0.7)
    rise = probe.score(steered) - probe.score(base)
    torch.testing.assert_close(rise, torch.full_like(rise, 0.7 * float(d.norm())), atol=1e-4, rtol=1e-4)


def test_diff_of_means_direction():
    pos, neg = torch.randn(20, D) + 2 * torch.eye(D)[3], torch.randn(30, D)
    torch.testing.assert_close(diff_of_means_direction(pos, neg), pos.mean(0) - neg.mean(0))
    assert int(diff_of_means_direction(pos.numpy(), neg.numpy()).abs().argmax()) == 3
    with pytest.raises(AlignlabError, match="acts_pos has 32 features but acts_neg has 5"):
        diff_of_means_direction(pos, torch.randn(4, 5))
    with pytest.raises(AlignlabError, match="acts_pos must be a non-empty"):
        diff_of_means_direction(torch.zeros(0, D), neg)
    with pytest.raises(AlignlabError, match="zero norm"):
        diff_of_means_direction(pos, pos)


def test_any_raw_vector_works_as_a_direction(model, batch):
    sae_decoder = torch.randn(16, D, dtype=torch.float64)
    row = as_direction(sae_decoder[4:5])  # a [1, D] row is accepted as a vector
    assert row.dtype == torch.float32 and row.shape == (D,)
    base, _ = _tap(model, 0, batch)
    steered, _ = _tap(model, 0, batch, direction=sae_decoder[4].numpy(), multiplier=1.0, normalize=False)
    torch.testing.assert_close(steered, base + row)


# --- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(layer=2), "layer 2 is out of range"),
    (dict(layer=-3), "layer -3 is out of range"),
    (dict(direction=torch.ones(D + 1)), f"direction has size {D + 1}, but the model's d_model is {D}"),
    (dict(direction=torch.ones(2, D)), "direction must be 1-D"),
    (dict(direction=torch.zeros(D)), "direction has zero norm"),
    (dict(direction=torch.full((D,), float("nan"))), "direction has non-finite"),
    (dict(direction=["a"] * D), "direction must be a vector of numbers"),
    (dict(mode="subtract"), "steering mode 'subtract' is unknown"),
    (dict(positions="prompt"), "steering positions 'prompt' is unknown"),
    (dict(mode="ablate", normalize=False), "normalize=False is not allowed with mode ablate"),
    (dict(multiplier=float("inf")), "multiplier must be a finite number"),
])
def test_bad_arguments_raise_before_anything_is_attached(model, kwargs, message):
    args = dict(layer=0, direction=torch.ones(D)) | kwargs
    with pytest.raises(AlignlabError, match=message):
        steer(model, **args)
    assert _n_hooks(model) == 0


@pytest.mark.parametrize(("changes", "message"), [
    (dict(multipliers=()), "field 'multipliers'"),
    (dict(multipliers=(1.0, float("nan"))), "field 'multipliers'"),
    (dict(mode="flip"), "field 'mode'"),
    (dict(positions="some"), "field 'positions'"),
    (dict(n_per_prompt=0), "field 'n_per_prompt'"),
    (dict(temperature=-1.0), "field 'temperature'"),
    (dict(max_new_tokens=0), "field 'max_new_tokens'"),
])
def test_bad_config_fields_are_named(changes, message):
    with pytest.raises(AlignlabError, match=message):
        SteeringConfig(**changes).check()


def test_plot_needs_points(tmp_path):
    with pytest.raises(AlignlabError, match="at least one"):
        plot_steering_curve({"empty": []}, tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()
