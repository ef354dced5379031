"""Generation backends: how a stage turns prompts into completions.

Every stage that samples (generate, judge, metajudge, evaluate) asks `open_backend` for one and calls
the same methods, so a loop switches backends with its top-level `backend:` key and nothing else:

    backend.sample(prompts, n, temperature, top_p, max_new_tokens, batch_size, seed, on_batch) -> n texts per prompt
    backend.choice_probs(prompts, choices) -> per prompt, the next-token probability of each choice
    backend.usage -> counters for the stage's metrics (tokens, requests, cost where priced)
    backend.close() -> frees the model (GPU memory) so training can follow on the same machine

- hf: transformers `generate` in this process (the default; CPU or one GPU).
"""

from __future__ import annotations

BACKENDS = ("hf",)


def open_backend(run: dict, model_ref: str, revision: str | None = None):
    """The backend the loop names (run["backend"], default hf) for the model at model_ref. Models load
    on first use, so a stage whose shards are all reused from an interrupted run never loads one."""
    name = run.get("backend", "hf")
    if name == "hf":
        from selfimprove.backends.hf import HFBackend

        return HFBackend(model_ref, revision)
    from selfimprove.errors import UserError

    raise UserError(f"backend: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
