"""Two processes on the CPU (gloo, launched by torchrun, the launcher accelerate's multi-GPU mode wraps) against
one: a pretraining objective must reach the same weights; GRPO with a live-policy probe reward must pay the same
probe rewards as a single process on the same completions, and its ranks must stay in sync; so must the
probe-loss trainer's."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from alignlab.bench.distributed_check import start_probe, toy_world
from alignlab.signals import ProbeReward

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(what: str, out, processes: int) -> None:
    module = ["-m", "alignlab.bench.distributed_check", "--what", what, "--out", str(out)]
    if processes == 1:
        cmd = [sys.executable, *module]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(free_port()), *module]
    env = {**os.environ, "ALIGNLAB_QUIET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_pretraining_objective_two_processes_match_one(tmp_path):
    launch("pretrain", tmp_path / "one", 1)
    launch("pretrain", tmp_path / "two", 2)
    one = load_file(tmp_path / "one" / "pretrain-rank0.safetensors")
    ranks = [load_file(tmp_path / "two" / f"pretrain-rank{r}.safetensors") for r in (0, 1)]
    _, _, init = toy_world()
    assert max_diff(one, init.state_dict()) > 1e-3  # it trained
    assert max_diff(ranks[0], ranks[1]) == 0
    assert max_diff(one, ranks[0]) < 1e-4  # measured 2e-6: float reduction order only


def test_grpo_probe_reward_two_processes_pay_what_one_pays(tmp_path):
    launch("grpo", tmp_path / "one", 1)
    launch("grpo", tmp_path / "two", 2)
    ranks = [load_file(tmp_path / "two" / f"grpo-rank{r}.safetensors") for r in (0, 1)]
    tasks, tokenizer, model = toy_world()
    assert max_diff(ranks[0], ranks[1]) == 0  # DDP kept the ranks in sync
    assert max_diff(ranks[0], model.state_dict()) > 1e-4  # and they trained
    probe = start_probe(tokenizer, model, tasks)
    single = ProbeReward(probe, tokenizer, model=model, mode="continuous")  # one process, the start weights
    paid = [json.loads((tmp_path / d / f"grpo-rewards-rank{r}.json").read_text())
            for d, r in (("one", 0), ("two", 0), ("two", 1))]
    assert [len(p["rewards"]) for p in paid] == [8, 4, 4]
    for p in paid:
        again = single(p["prompts"], None, p["completion_ids"])
        assert torch.allclose(torch.tensor(again), torch.tensor(p["rewards"]), atol=1e-3)  # measured ≤ 3e-4
    assert len({tuple(p["rewards"]) for p in paid[1:]}) == 2  # the ranks scored different rollouts


def test_grpo_probe_loss_ranks_stay_in_sync(tmp_path):
    launch("grpo-probe-loss", tmp_path / "two", 2)
    ranks = [load_file(tmp_path / "two" / f"grpo-probe-loss-rank{r}.safetensors") for r in (0, 1)]
    assert max_diff(ranks[0], ranks[1]) == 0
