"""A client for OpenAI-compatible endpoints (a `vllm serve`, a hosted API): bounded concurrency, a
request timeout, retries with exponential backoff on 429, 5xx and dropped connections; several servers
of one model share the load (each attempt goes to the least busy), and a ResponseCache on disk keeps
every completed reply, so a crash or a rerun never pays twice for a request.

The API key is read from the environment variable the loop names (judge.api_key_env, openai.api_key_env)
at request time and sent only in the Authorization header: it is never in params.yaml, dvc.lock, logs,
caches or outputs, and errors never quote it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from selfimprove.core.errors import UserError
from selfimprove.core.files import write_text

RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


class Unreachable(UserError):
    """No attempt reached a server: refused or dropped connections, timeouts (the server may be down)."""


class Endpoint:
    """One server or several serving the same model (base_url a list); section names the loop section
    the settings came from, for the error messages (judge or openai)."""

    def __init__(self, base_url: str | list[str], model: str, api_key_env: str = "", concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 1.0, section: str = "judge"):
        self.bases = [url.rstrip("/") for url in ([base_url] if isinstance(base_url, str) else base_url)]
        self.model, self.api_key_env, self.section = model, api_key_env, section
        self.concurrency, self.timeout, self.max_retries, self.backoff = concurrency, timeout, max_retries, backoff
        self.in_flight = [0] * len(self.bases)
        self.sent = 0  # requests that reached the network, retries included
        self._turn = itertools.count()  # breaks ties between equally busy servers in turn
        self._lock = threading.Lock()
        if api_key_env and not os.environ.get(api_key_env):
            raise UserError(f"{section}.api_key_env: the environment variable {api_key_env} is not set; export it "
                            "with the endpoint's key (the key itself never goes in the loop file)")

    def complete(self, prompts: list[str], n: int, temperature: float, top_p: float, max_tokens: int,
                 on_done=None) -> list[list[str]]:
        """n chat completions per prompt (one request each), in prompt order, `concurrency` in flight."""
        bodies = [{"model": self.model, "messages": [{"role": "user", "content": prompt}], "n": n,
                   "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens} for prompt in prompts]
        replies = self.post_all(bodies, "/chat/completions", on_done=on_done)
        return [[choice["message"]["content"] or "" for choice in reply["choices"]] for reply in replies]

    def post_all(self, bodies: list[dict], path: str, cache: "ResponseCache | None" = None, on_done=None) -> list[dict]:
        """The reply to every body, in order, `concurrency` requests in flight per server; a body whose
        reply is in the cache is not sent, and every new reply is stored the moment it arrives."""
        def one(body: dict) -> dict:
            kept = cache.get(body) if cache else None
            if kept is not None:
                return kept
            payload = self.post(body, path)
            if cache:
                cache.put(body, payload)
            return payload

        replies = []
        with ThreadPoolExecutor(max_workers=self.concurrency * len(self.bases)) as pool:
            for payload in pool.map(one, bodies):
                replies.append(payload)
                if on_done:
                    on_done(len(replies))
        return replies

    def post(self, body: dict, path: str = "/chat/completions") -> dict:
        """The JSON reply to one request, retried with backoff; each attempt goes to the least busy server."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        last_error, url, unreachable = "", self.bases[0] + path, False
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            server = self._acquire()
            url = self.bases[server] + path
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read())
                if not isinstance(payload, dict) or not payload.get("choices"):
                    raise ValueError
                return payload
            except urllib.error.HTTPError as error:
                last_error, unreachable = f"HTTP {error.code}", False
                if error.code not in RETRYABLE:
                    key = "" if self.section == "engine" else " and the key in the environment variable"
                    raise UserError(f"{url}: HTTP {error.code} ({_reason(error)}); check {self._settings_hint()}"
                                    f"{key}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                last_error = type(getattr(error, "reason", error)).__name__
                unreachable = True
            except (ValueError, KeyError, TypeError):
                last_error, unreachable = "a reply that is not an OpenAI completion", False
            finally:
                self._release(server)
        raise (Unreachable if unreachable else UserError)(
            f"{url}: no answer after {self.max_retries + 1} attempts (last: {last_error}); "
            "is the server up? Rerun to resume: finished shards and replies are kept")

    def _acquire(self) -> int:
        with self._lock:
            turn = next(self._turn)
            server = min(range(len(self.bases)), key=lambda i: (self.in_flight[i], (i - turn) % len(self.bases)))
            self.in_flight[server] += 1
            self.sent += 1
            return server

    def _release(self, server: int) -> None:
        with self._lock:
            self.in_flight[server] -= 1

    def _settings_hint(self) -> str:
        if self.section == "engine":
            return "the warm engine's log (runs/RUN/engine/server.log)"
        if self.section == "judge":
            return "judge.endpoint, judge.api_model"
        return f"{self.section}.endpoints, {self.section}.api_model"


class ResponseCache:
    """Completed replies on disk, one file per request, named by a hash of the request body: the model
    name, prompt, seed and sampling settings, never the server's address or the key, so the same request
    sent to another server of the model is still a hit. Written atomically: a killed stage leaves no
    half reply."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.hits = 0
        self._lock = threading.Lock()

    def _path(self, body: dict) -> Path:
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.json"

    def has(self, body: dict) -> bool:
        return self._path(body).exists()

    def get(self, body: dict) -> dict | None:
        path = self._path(body)
        if not path.exists():
            return None
        with self._lock:
            self.hits += 1
        return json.loads(path.read_text())

    def put(self, body: dict, payload: dict) -> None:
        # Threads may put the same request at once: each writes a temporary file of its own.
        write_text(self._path(body), json.dumps(payload), tmp_suffix=f".{threading.get_ident()}.tmp")

    def replies(self) -> list[dict]:
        return [json.loads(path.read_text()) for path in sorted(self.folder.glob("*/*.json"))]


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("error", {}).get("message", "")[:200]
    except (ValueError, AttributeError, OSError):
        return error.reason or ""
