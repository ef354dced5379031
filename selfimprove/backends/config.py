"""The loop file's backend keys: `backend`, `chat_template` and each backend's section (`vllm:`,
`openai:`), checked against the settings the backends declare and turned into the params the sampling
stages track."""

from __future__ import annotations

import copy
import re

from selfimprove.core.registry import BACKENDS, DEFAULT_BACKEND, resolve, suggestion
from selfimprove.core.validation import Problems, check_section, check_values, defaults


def check_backend(raw: dict, problems: Problems) -> tuple[str, bool, dict]:
    """(backend, chat_template, the chosen backend's resolved section). Every backend's section is checked
    even when another backend is chosen, so a loop can keep them and switch with the one key."""
    backend = raw.get("backend", DEFAULT_BACKEND)
    if backend not in BACKENDS:
        problems.add(("backend",), f"{backend!r} is not a backend; {suggestion(backend, BACKENDS)} (e.g. backend: vllm)")
    chat_template = raw.get("chat_template", False)
    if not isinstance(chat_template, bool):
        problems.add(("chat_template",), f"expected true or false, got {chat_template!r}")
        chat_template = False
    sections = {}
    for name in BACKENDS:
        settings = resolve("backend", name).SETTINGS
        if not settings:
            continue
        values = raw.get(name) or {}
        if isinstance(values, dict) and isinstance(values.get("endpoints"), str):
            values = {**values, "endpoints": [values["endpoints"]]}  # --set openai.endpoints=URL: one endpoint
        sections[name] = {**defaults(settings), **check_section(values, settings, (name,), problems)}
        check_values(sections[name], settings, (name,), problems, set())
    openai = sections["openai"]
    if any(not isinstance(url, str) or not re.match(r"https?://", url) for url in openai["endpoints"]):
        problems.add(("openai", "endpoints"), "must be base URLs, e.g. endpoints: [http://localhost:8000/v1]")
    elif not openai["serve"] and any("{port}" in url for url in openai["endpoints"]):
        problems.add(("openai", "endpoints"), "{port} is filled only for servers the stage starts; set openai.serve "
                     "to the launch command, or give the port")
    if backend == "openai" and not openai["endpoints"]:
        problems.add(("backend",), "openai needs openai.endpoints, the servers' base URLs; e.g. "
                     "openai: {endpoints: [http://localhost:8000/v1]}")
    check_key_env(openai["api_key_env"], ("openai", "api_key_env"), problems)
    return backend, chat_template, sections.get(backend, {})


def check_engine(raw: dict, backend: str, problems: Problems) -> tuple[str, dict]:
    """(engine, the warm_engine: section resolved): an engine per stage (the default), or the run's warm
    engine (selfimprove.backends.warm), which serves the vllm backend."""
    from selfimprove.backends import warm

    engine = raw.get("engine", "stage")
    if engine not in warm.ENGINES:
        problems.add(("engine",), f"{engine!r} is not an engine; {suggestion(str(engine), warm.ENGINES)} "
                     "(stage: each sampling stage starts its own; warm: one vLLM server for the run)")
        engine = "stage"
    elif engine == "warm" and backend != "vllm":
        problems.add(("engine",), f"warm is a vLLM server the run keeps, and the backend is {backend}; set "
                     "backend: vllm, or remove engine: warm")
    settings = {**defaults(warm.SETTINGS), **check_section(raw.get("warm_engine") or {}, warm.SETTINGS,
                                                           ("warm_engine",), problems)}
    check_values(settings, warm.SETTINGS, ("warm_engine",), problems, set())
    return engine, settings


def check_key_env(name: str, path: tuple, problems: Problems) -> None:
    """api_key_env names the environment variable; a pasted key is refused before it reaches params.yaml."""
    if name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        problems.add(path, "is the NAME of an environment variable holding the key (e.g. OPENAI_API_KEY), "
                     "never the key itself")


def backend_params(loop) -> dict:
    """The backend's entries in params.yaml: none for the default (hf without a chat template), so loops
    that never name a backend compile exactly as before; else backend, chat_template and its section."""
    if loop.backend == DEFAULT_BACKEND and not loop.chat_template:
        return {}
    params = {"backend": loop.backend, "chat_template": loop.chat_template}
    if loop.backend_settings:
        params[loop.backend] = copy.deepcopy(loop.backend_settings)
    return params


def tracked_keys(loop) -> list[str]:
    """The backend params (relative to the run's section) that sampling stages depend on: changing them
    re-runs those stages; which of its section's keys count is the backend's to say (TRACKED)."""
    if not backend_params(loop):
        return []
    tracked = resolve("backend", loop.backend).TRACKED
    return ["backend", "chat_template"] + list(tracked(loop.backend_settings) if callable(tracked) else tracked)
