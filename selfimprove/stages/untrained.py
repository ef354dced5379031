"""The builtin tiny-arith architecture with random weights, for tests and benchmarks: their mechanics
and speeds do not depend on what the model knows. Kept out of the bootstrap stage's module so that
no loop's cached stages depend on it."""

from __future__ import annotations

from selfimprove.tasks import tinyarith


def save_untrained(directory, layers: int = 4, chars: list[str] = tinyarith.CHARS, seed: int = 0) -> str:
    """Build (seeded) and save the model with its tokenizer; return the directory."""
    import torch

    from selfimprove.stages.bootstrap import build_model, build_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(chars)
    build_model(tokenizer, layers).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
