"""A stage's line to the run's warm engine (selfimprove.pipeline.engine_broker): found through the
environment, so a stage run by a plain `dvc repro` (no variable) starts its own engine as before.

`selfimprove run` with `engine: warm` sets SELFIMPROVE_ENGINE to its broker's address for the `dvc repro`
it starts; the broker answers only requests from this project carrying the run's token (in the address),
so a variable left in another shell or a second workspace never reaches another run's engine.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

ENV = "SELFIMPROVE_ENGINE"  # http://127.0.0.1:PORT/TOKEN of the run's broker


class BrokerGone(Exception):
    """The broker does not answer: the run that set the variable is over (a stale variable)."""


def address() -> str | None:
    return os.environ.get(ENV) or None


def ask(path: str, body: dict, timeout: float = 3600.0) -> dict:
    """The broker's JSON reply to one request (an engine start may take minutes: the timeout is long)."""
    body = {**body, "project": str(Path.cwd().resolve())}
    request = urllib.request.Request(address().rstrip("/") + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read() or b"{}") or {"error": f"HTTP {error.code}"}
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        raise BrokerGone(f"{ENV}={address()} does not answer ({type(getattr(error, 'reason', error)).__name__})") from None


def make_room() -> None:
    """Before a stage loads a model of its own (training, an hf scorer, an engine of its own): put the
    warm engine to sleep so its GPU memory is free (a no-op without a warm engine, or on the CPU)."""
    if not address():
        return
    try:
        ask("/room", {})
    except BrokerGone:
        pass
