"""The documented accelerate configs load in accelerate; the vLLM switch reaches TRL; the bench harness writes
BENCHMARKS.md and refuses unknown benchmarks."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from alignlab.bench.common import row
from alignlab.bench.harness import machine, write_markdown
from alignlab.cli import main
from alignlab.train.grpo import GRPORunConfig, grpo_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


@pytest.mark.parametrize("name, kind, extra", [
    ("single-gpu", "NO", None),
    ("ddp", "MULTI_GPU", None),
    ("fsdp", "FSDP", ("fsdp_config", "fsdp_version", 2)),
    ("zero2", "DEEPSPEED", ("deepspeed_config", "zero_stage", 2)),
    ("zero3", "DEEPSPEED", ("deepspeed_config", "zero_stage", 3)),
])
def test_accelerate_configs_load(name, kind, extra):
    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert cfg.distributed_type.name == kind and not cfg.use_cpu
    if extra:
        section, key, value = extra
        assert getattr(cfg, section)[key] == value


def test_vllm_switch_reaches_trl(tmp_path):
    args = grpo_args(GRPORunConfig(use_vllm=True, vllm_mode="server"), str(tmp_path))
    assert args.use_vllm and args.vllm_mode == "server"
    assert not grpo_args(GRPORunConfig(), str(tmp_path)).use_vllm


def test_benchmarks_markdown(tmp_path):
    results = [{"name": "toy ratio", "seconds": 1.0, "rows": [row("a", 0.9, 1.05, "fast"),
                                                              row("b", 1.2, 1.05, "slow"),
                                                              row("c", 0.8, 0.95, "", higher_is_better=True)]},
               {"name": "walls", "seconds": 2.0, "rows": [row("study x", 12.34, None, "ok", unit="s")]}]
    out = tmp_path / "BENCHMARKS.md"
    write_markdown(out, results, machine(), quick=True, command="alignlab bench --quick")
    text = out.read_text()
    assert "| a | 0.900 | ≤ 1.050 | ok | fast |" in text
    assert "| b | 1.200 | ≤ 1.050 | MISSED | slow |" in text
    assert "| c | 0.800 | ≥ 0.950 | MISSED |" in text
    assert "| study x | 12.3 s |  |  | ok |" in text
    assert "torch" in text and "CPUs" in text


def test_bench_rejects_unknown_names(tmp_path, capsys):
    assert main(["bench", "--only", "harvest,nope", "--out", str(tmp_path / "B.md")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "B.md").exists()


def test_chat_prompt_renders_the_task_through_the_chat_template():
    from alignlab.envs import TaskConfig, generate_tasks
    from alignlab.models import build_tokenizer
    from alignlab.train.grpo import CHAT_INSTRUCTION, chat_prompt

    task = generate_tasks(1, TaskConfig(), seed=0)[0]
    tok = build_tokenizer([task.prompt], 300)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert chat_prompt(tok, task) == f"<user>{CHAT_INSTRUCTION}{task.prompt}</user><assistant>"
