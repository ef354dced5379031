"""Batched sampling with the transformers backend: left padding, n samples per prompt, seeded.

Determinism: the RNG is seeded per call from (seed, shard), so a shard regenerated after a crash is
identical to the one an uninterrupted run would have written.
"""

from __future__ import annotations


def sample(model, tokenizer, prompts: list[str], n: int, temperature: float, top_p: float,
           max_new_tokens: int, batch_size: int, seed: int, on_batch=None,
           add_special_tokens: bool = True) -> list[list[str]]:
    """n completions per prompt (greedy when temperature == 0, then n is forced to 1).
    on_batch(prompts_done) is called after every forward pass, for progress displays.
    add_special_tokens=False for prompts a chat template rendered: they already hold the BOS token."""
    import torch

    greedy = temperature == 0
    n = 1 if greedy else n
    per_batch = max(1, batch_size // n)  # prompts per forward pass
    torch.manual_seed(seed)
    outputs: list[list[str]] = []
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start:start + per_batch]
        encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens).to(model.device)
        kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        with torch.no_grad():
            generated = model.generate(**encoded, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                       pad_token_id=tokenizer.pad_token_id, **kwargs)
        texts = tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        outputs.extend(texts[i * n:(i + 1) * n] for i in range(len(chunk)))
        if on_batch:
            on_batch(len(outputs))
    return outputs
