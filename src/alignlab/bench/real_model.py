"""The real model on one CPU thread: SmolLM2-135M-Instruct's load times (first load = GGUF conversion, later
loads = the cached safetensors directory, each in a fresh process), forward tokens/s, greedy generation tokens/s
with alignlab's sampler ÷ HF generate (side by side, alternating, medians; the same tokens), peak memory.

    python bench/real_model.py [--quick]     (--quick skips the conversion: a minute; or: alignlab bench)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from alignlab.bench.common import print_result, row

NAME = "smollm2-135m-instruct"
QUESTIONS = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
             "Describe a walk in the forest.", "Tell me about the history of bread."]


def _fresh_load(cache: str | None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of `load_model(NAME)` in a new one-thread Python process (imports included)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNLAB_QUIET": "1"}
    if cache is not None:
        env["ALIGNLAB_CACHE"] = cache
    code = ("import resource, time; t = time.perf_counter(); from alignlab.models import load_model; "
            f"load_model({NAME!r}); print(time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    seconds, rss = out.stdout.split()[-2:]
    return float(seconds), float(rss)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def run(quick: bool = False) -> dict:
    from alignlab.models import load_model
    from alignlab.models.sampling import generate_ids

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        if not quick:
            with tempfile.TemporaryDirectory() as cache:
                seconds, rss = _fresh_load(cache)
            rows.append(row("first load: GGUF -> fp32 safetensors cache, fresh process", seconds, None,
                            f"peak RSS {rss:.0f} MB", unit="s"))
        _fresh_load(None)  # make sure the cache holds it
        seconds, rss = _fresh_load(None)
        rows.append(row("cached load, fresh process (imports included)", seconds, None, f"peak RSS {rss:.0f} MB",
                        unit="s"))
        start = time.perf_counter()
        model, tokenizer = load_model(NAME)
        rows.append(row("cached load, torch and transformers already imported", time.perf_counter() - start, None,
                        unit="s"))
        model.eval()
        ids = torch.randint(0, model.config.vocab_size, (4, 128), generator=torch.Generator().manual_seed(0))
        model(ids)
        t = _median_time(lambda: model(ids), 3 if quick else 5)
        rows.append(row("forward, 4 x 128 tokens", ids.numel() / t, None, f"{t:.2f} s per batch", unit="tok/s"))
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                 add_generation_prompt=True) for q in QUESTIONS]
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
        new = 32 if quick else 64
        ours_t, hf_t, ours_n = [], [], 0
        for _ in range(2 if quick else 3):  # alternate so drift hits both alike
            start = time.perf_counter()
            ours = generate_ids(model, prompt_ids, max_new_tokens=new, eos_token_ids=[tokenizer.eos_token_id],
                                pad_token_id=tokenizer.pad_token_id, temperature=0.0)
            ours_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            hf = model.generate(**enc, max_new_tokens=new, do_sample=False)
            hf_t.append(time.perf_counter() - start)
            ours_n = sum(len(c) for c in ours.completion_ids)
            hf_new = hf[:, enc["input_ids"].shape[1]:]
            same = all(hf_new[i, :len(c)].tolist() == c for i, c in enumerate(ours.completion_ids))
        ours_s, hf_s = statistics.median(ours_t), statistics.median(hf_t)
        detail = f"{len(prompts)} chat prompts x {new} new tokens, greedy; same tokens: {same}"
        rows.append(row("generation, alignlab sampler", ours_n / ours_s, None, detail, unit="tok/s"))
        rows.append(row("generation, HF generate", ours_n / hf_s, None, detail, unit="tok/s"))
        rows.append(row("generation time: alignlab sampler ÷ HF generate", ours_s / hf_s, 1.0, detail))
        rows.append(row("peak RSS of this process (model, forward, generation)",
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None, unit="MB"))
    finally:
        torch.set_num_threads(threads)
    return {"name": f"real model {NAME} on one CPU thread", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the conversion (a minute), fewer repeats")
    print_result(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
