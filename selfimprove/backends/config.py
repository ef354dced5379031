"""The loop file's backend keys: `backend`, `chat_template` and the `vllm:` / `openai:` sections,
checked (selfimprove.schema) and turned into the params the sampling stages track."""

from __future__ import annotations

import copy
import re

from selfimprove.schema import Problems, check_section, defaults
from selfimprove.settings import BACKENDS, OPENAI_SETTINGS, VLLM_SETTINGS

BACKEND_SETTINGS = {"vllm": VLLM_SETTINGS, "openai": OPENAI_SETTINGS}


def check_backend(raw: dict, reads_probabilities: bool, problems: Problems) -> tuple[str, bool, dict]:
    """(backend, chat_template, the chosen backend's resolved section). Both sections are checked even
    when the other backend is chosen, so a loop can keep them and switch with the one key."""
    backend = raw.get("backend", "hf")
    if backend not in BACKENDS:
        problems.add(("backend",), f"{backend!r} is not one of: {', '.join(BACKENDS)}; e.g. backend: vllm")
    chat_template = raw.get("chat_template", False)
    if not isinstance(chat_template, bool):
        problems.add(("chat_template",), f"expected true or false, got {chat_template!r}")
        chat_template = False
    sections = {}
    for name, schema in BACKEND_SETTINGS.items():
        values = raw.get(name) or {}
        if isinstance(values, dict) and isinstance(values.get("endpoints"), str):
            values = {**values, "endpoints": [values["endpoints"]]}  # --set openai.endpoints=URL: one endpoint
        sections[name] = {**defaults(schema), **check_section(values, schema, (name,), problems)}
    for key in ("tensor_parallel_size", "data_parallel_size"):
        if sections["vllm"][key] < 1:
            problems.add(("vllm", key), f"{sections['vllm'][key]!r} must be >= 1")
    if not 0 < sections["vllm"]["gpu_memory_utilization"] <= 1:
        problems.add(("vllm", "gpu_memory_utilization"), "is a share of GPU memory; use a value in (0, 1], e.g. 0.9")
    openai = sections["openai"]
    if any(not isinstance(url, str) or not re.match(r"https?://", url) for url in openai["endpoints"]):
        problems.add(("openai", "endpoints"), "must be base URLs, e.g. endpoints: [http://localhost:8000/v1]")
    if backend == "openai" and not openai["endpoints"]:
        problems.add(("backend",), "openai needs openai.endpoints, the servers' base URLs; e.g. "
                     "openai: {endpoints: [http://localhost:8000/v1]}")
    check_key_env(openai["api_key_env"], ("openai", "api_key_env"), problems)
    if reads_probabilities:  # some iteration reads a judge's token probabilities
        if backend == "openai":
            problems.add(("backend",), "openai cannot read token probabilities, which judge.mode expected / "
                         "generate_then_expected and metajudge.mode expected need; use mode generate, or backend hf or vllm")
        if chat_template:
            problems.add(("chat_template",), "probability read-outs (judge.mode expected, generate_then_expected, "
                         "metajudge.mode expected) extend the raw prompt; set chat_template: false and put the chat "
                         "format in judge.prompt_template and data.prompt_template")
    return backend, chat_template, sections.get(backend, {})


def check_key_env(name: str, path: tuple, problems: Problems) -> None:
    """api_key_env names the environment variable; a pasted key is refused before it reaches params.yaml."""
    if name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        problems.add(path, "is the NAME of an environment variable holding the key (e.g. OPENAI_API_KEY), "
                     "never the key itself")


def backend_params(loop) -> dict:
    """The backend's entries in params.yaml: none for the default (hf without a chat template), so loops
    that never name a backend compile exactly as before; else backend, chat_template and its section."""
    if loop.backend == "hf" and not loop.chat_template:
        return {}
    params = {"backend": loop.backend, "chat_template": loop.chat_template}
    if loop.backend_settings:
        params[loop.backend] = copy.deepcopy(loop.backend_settings)
    return params


def tracked_keys(loop) -> list[str]:
    """The backend params (relative to the run's section) that sampling stages depend on: changing them
    re-runs those stages. An endpoint's address, concurrency, timeouts and prices change how requests
    travel, not what comes back, so an OpenAI run tracks only the model name it asks for."""
    params = backend_params(loop)
    if not params:
        return []
    keys = ["backend", "chat_template"]
    if loop.backend == "vllm":
        keys.append("vllm")
    elif loop.backend == "openai":
        keys.append("openai.api_model")
    return keys
