"""The random streams of a run, named in one place.

A run has one seed. Each thing it draws (training tasks, held-out tasks, probe data, a degraded probe's coins, the
monitor's flags, …) reads its own stream, `derive(seed, name)`: the seed plus the stream's offset, so that two
streams never share draws and a new stream never shifts an old one. The offsets are the ones the project has always
used (changing one would change every result drawn from it); a study's own streams sit here too.
"""

from __future__ import annotations

from alignlab import AlignlabError

STREAMS: dict[str, int] = {
    # the reward-hacking world (organisms, probes, RL runs)
    "eval_tasks": 1_000_003,  # held-out tasks: apart from the corpus's draws (offset 0)
    "probe_tasks": 2_000_029,  # tasks the on-policy probe data is sampled on
    "train_tasks": 3_000_017,  # GRPO training tasks
    "frontier_eval": 5_000_011,  # the frontier measurer's held-out tasks, apart from "eval_tasks"
    "probe_coin": 7_000_003,  # a degraded probe's coin per rollout
    "probe_health": 17,  # the policy's fresh samples the probe's health is measured on
    "probe_refit": 0,  # + 31 · step: the fresh samples a refit probe is fitted on at that step
    # the character study (absolute: its world has one seed); relearning adds the RL seed
    "character_treat": 5_000_011,
    "character_probe": 6_000_007,
    "character_relearn": 7_000_003,
    "character_surface": 8_000_009,
    "character_knowledge": 9_000_011,
}


def derive(seed: int, name: str, index: int = 0) -> int:
    """The seed of stream `name` of a run seeded `seed` (`index`: a sub-stream, e.g. a step)."""
    if name not in STREAMS:
        raise AlignlabError(f"unknown random stream {name!r}; known: {', '.join(STREAMS)}")
    return seed + STREAMS[name] + index


def monitor_salt(seed: int) -> str:
    """The text monitor hashes each completion with this salt: its flags are a stream of their own."""
    return f"monitor{seed}"
