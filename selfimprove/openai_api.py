"""A client for OpenAI-compatible chat completion endpoints (a `vllm serve`, a hosted API): bounded
concurrency, a request timeout, retries with exponential backoff on 429, 5xx and dropped connections.

The API key is read from the environment variable the loop names (judge.api_key_env) at request time
and sent only in the Authorization header: it is never in params.yaml, dvc.lock, logs or outputs, and
errors never quote it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from selfimprove.errors import UserError

RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


class Endpoint:
    def __init__(self, base_url: str, model: str, api_key_env: str = "", concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 1.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.concurrency, self.timeout, self.max_retries, self.backoff = concurrency, timeout, max_retries, backoff
        if api_key_env and not os.environ.get(api_key_env):
            raise UserError(f"judge.api_key_env: the environment variable {api_key_env} is not set; export it "
                            "with the endpoint's key (the key itself never goes in the loop file)")

    def complete(self, prompts: list[str], n: int, temperature: float, top_p: float, max_tokens: int,
                 on_done=None) -> list[list[str]]:
        """n completions per prompt, in prompt order; requests run `concurrency` at a time."""
        done = 0

        def one(prompt: str) -> list[str]:
            return self._request({"model": self.model, "messages": [{"role": "user", "content": prompt}], "n": n,
                                  "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens})

        results = []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for texts in pool.map(one, prompts):
                results.append(texts)
                done += 1
                if on_done:
                    on_done(done)
        return results

    def _request(self, body: dict) -> list[str]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read())
                return [choice["message"]["content"] or "" for choice in payload["choices"]]
            except urllib.error.HTTPError as error:
                last_error = f"HTTP {error.code}"
                if error.code not in RETRYABLE:
                    raise UserError(f"{self.url}: HTTP {error.code} ({_reason(error)}); check judge.endpoint, "
                                    "judge.api_model and the key in the environment variable") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                last_error = type(getattr(error, "reason", error)).__name__
            except (ValueError, KeyError, TypeError):
                last_error = "a reply that is not an OpenAI chat completion"
        raise UserError(f"{self.url}: no answer after {self.max_retries + 1} attempts (last: {last_error}); "
                        "is the server up? Rerun to resume: finished shards are kept")


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("error", {}).get("message", "")[:200]
    except (ValueError, AttributeError, OSError):
        return error.reason or ""
