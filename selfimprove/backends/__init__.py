"""Generation backends: how a stage turns prompts into completions.

Every stage that samples (generate, judge, metajudge, evaluate) asks `open_backend` for one and calls
the same methods, so a loop switches backends with its top-level `backend:` key and nothing else:

    backend.sample(prompts, n, temperature, top_p, max_new_tokens, batch_size, seed, on_batch) -> n texts per prompt
    backend.choice_probs(prompts, choices) -> per prompt, the next-token probability of each choice
    backend.usage -> counters for the stage's metrics (tokens, requests, cost where priced)
    backend.close() -> frees the model (GPU memory) so training can follow on the same machine

- hf: transformers `generate` in this process (the default; CPU or one GPU).
- vllm: offline `vllm.LLM` on one or more GPUs (tensor and data parallel), selfimprove.backends.vllm.
- openai: any OpenAI-compatible server (`vllm serve`, a hosted API), selfimprove.backends.openai.

With the loop's `chat_template: true`, hf and vllm wrap each sampled prompt in the tokenizer's chat
template and openai sends it as a chat message; otherwise every backend sees the same raw text.
"""

from __future__ import annotations

from pathlib import Path


def open_backend(run: dict, model_ref: str, revision: str | None = None, scratch: str | Path | None = None):
    """The backend the loop names (run["backend"], default hf; selfimprove.core.registry.BACKENDS) for the
    model at model_ref, with its section (run["vllm"] / run["openai"]) over the backend's defaults.
    scratch is the stage's scratch area (selfimprove.stages.shards), where the OpenAI backend keeps its response
    cache and vLLM a LoRA adapter's merged model. Models load on first use, so a stage whose shards are
    all reused from an interrupted run never loads one."""
    from selfimprove.core.errors import UserError
    from selfimprove.core.registry import DEFAULT_BACKEND, RUN_ENGINES, UnknownName, resolve
    from selfimprove.core.warm_link import address

    name = run.get("backend", DEFAULT_BACKEND)
    try:
        backend = resolve("backend", name)
    except UnknownName as error:
        raise UserError(f"backend: {error}") from None
    section = {**{key: s.default for key, s in backend.SETTINGS.items()}, **(run.get(name) or {})}
    if not getattr(backend, "TEMPERATURE_HEAD", False):
        from selfimprove.models import head_base

        if head_base(model_ref):
            raise UserError(f"backend: {name} cannot decode with the temperature head of {model_ref} (it picks a "
                            "temperature per response or token from the model's hidden states); use backend: hf")
    if name in RUN_ENGINES and address():  # the run keeps an engine for it (engine: warm)
        backend = resolve("run engine", name)
    return backend.open(model_ref, revision, section, bool(run.get("chat_template", False)), scratch)


def chat_prompts(tokenizer, prompts: list[str]) -> list[str]:
    """Each prompt as the single user turn of the tokenizer's chat template, ready for the reply."""
    from selfimprove.core.errors import UserError

    if not getattr(tokenizer, "chat_template", None):
        raise UserError("chat_template: the model's tokenizer has no chat template; set chat_template: false "
                        "(prompts are then sent as raw text, shaped by data.prompt_template)")
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def usage_figures(stage: str, backend) -> dict:
    """A backend's usage counters as metrics named after the stage (generate_prompt_tokens, ...)."""
    return {f"{stage}_{key}": value for key, value in getattr(backend, "usage", {}).items()}
