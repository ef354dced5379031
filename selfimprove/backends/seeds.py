"""The seed of each sample a backend asks an engine or a server for."""

from __future__ import annotations

import hashlib


def sample_seed(seed: int, index: int, sample: int) -> int:
    """The seed of sample `sample` of the index-th prompt of a call: a 63-bit hash of the three.

    Engines seed sample j of a request with seed + j (vLLM), and a text drawn with one seed on two
    prompts can come out nearly the same (seen on vLLM with an untrained model): seeds made by adding
    (seed + index, seed + j) repeat across prompts. Hashed seeds never do by arithmetic, and do not
    depend on how the prompts were split between workers or servers."""
    digest = hashlib.blake2b(f"{seed}/{index}/{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
