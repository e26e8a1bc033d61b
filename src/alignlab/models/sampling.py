"""Batched sampling from any HF causal LM: prompts in, completion texts out (up to EOS)."""

from __future__ import annotations

import torch


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    n_per_prompt: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 128,
    seed: int = 0,
    suppress_ids: list[int] | None = None,
) -> list[list[str]]:
    """Return, for each prompt, `n_per_prompt` sampled completions. Seeded: same seed, same samples.
    `suppress_ids`: tokens never generated (e.g. a <|bad|> control token)."""
    model.eval()
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    flat = [p for p in prompts for _ in range(n_per_prompt)]
    texts: list[str] = []
    device = next(model.parameters()).device
    for start in range(0, len(flat), batch_size):
        batch = tokenizer(flat[start : start + batch_size], return_tensors="pt", padding=True).to(device)
        out = model.generate(
            **batch,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            suppress_tokens=suppress_ids or None,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return [texts[i * n_per_prompt : (i + 1) * n_per_prompt] for i in range(len(prompts))]
