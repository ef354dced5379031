"""The OpenAI-compatible backend: generation (and judging) by servers that speak the OpenAI API, e.g.
one or several `vllm serve runs/scpo/it1/model` processes.

    backend: openai
    openai: {endpoints: [http://gpu1:8000/v1, http://gpu2:8000/v1], api_key_env: MY_KEY}

One request per sample (n = 1, with its own seed), so requests spread evenly over the servers and every
completed sample is cached on its own (selfimprove.backends.openai_client.ResponseCache, in the stage's scratch
area): after a crash or a Ctrl-C the rerun sends only what never came back. Without a chat template the
raw prompt goes to /completions, exactly the text the hf and vllm backends see; with
`chat_template: true` it goes to /chat/completions as the user's message and the server applies the
model's template. The model name sent is openai.api_model, else the model reference the stage was
given (a `vllm serve runs/x/it1/model` serves under that name).
"""

from __future__ import annotations

from pathlib import Path

from selfimprove.backends.seeds import sample_seed
from selfimprove.core.errors import UserError
from selfimprove.backends.openai_client import Endpoint, ResponseCache
from selfimprove.core.stage import Setting

SETTINGS = {  # the loop file's openai: section (any OpenAI-compatible server, `vllm serve`)
    "endpoints": Setting(list, [], "base URLs; requests go to the least busy, e.g. [http://gpu1:8000/v1, "
                         "http://gpu2:8000/v1]"),
    "api_model": Setting(str, "", "the name the servers know the model by (\"\": the model reference the stage is given)"),
    "api_key_env": Setting(str, "", "the environment variable holding the key (never the key)"),
    "concurrency": Setting(int, 8, "requests in flight per endpoint"),
    "timeout": Setting(float, 60.0, "seconds per request"),
    "max_retries": Setting(int, 5, "on 429, 5xx, timeouts and dropped connections, with exponential backoff"),
    "backoff": Setting(float, 1.0, "seconds before the first retry; doubles each time"),
    "price_per_1m_input_tokens": Setting(float, 0.0, "for the cost in the stage's metrics (0: not priced)"),
    "price_per_1m_output_tokens": Setting(float, 0.0, "for the cost in the stage's metrics (0: not priced)"),
    "serve": Setting(str, "", "a command that starts a server on the stage's model ({model}, {port}), run by each "
                     "sampling stage for each endpoint and stopped after it (selfimprove.backends.serve)"),
    "serve_timeout": Setting(float, 900.0, "seconds a started server may take to answer"),
}


class OpenAIBackend:
    SETTINGS = SETTINGS
    # An endpoint's address, concurrency, timeouts and prices change how requests travel, not what comes
    # back: the model name asked for is tracked, and the launch command where the stage starts servers
    # (its flags, a seed or a dtype, change the texts).
    @staticmethod
    def TRACKED(settings: dict) -> tuple[str, ...]:
        return ("openai.api_model",) + (("openai.serve",) if settings.get("serve") else ())

    @classmethod
    def open(cls, model_ref: str, revision: str | None, settings: dict, chat_template: bool, scratch):
        return cls(model_ref, settings, chat_template=chat_template,
                   cache_dir=Path(scratch) / "requests" if scratch else None)

    def __init__(self, model_ref: str, settings: dict, chat_template: bool = False,
                 cache_dir: str | Path | None = None):
        self.model = settings["api_model"] or model_ref
        self.settings, self.chat_template = settings, chat_template
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self.servers = None
        if settings.get("serve"):  # started on the first request: a stage whose replies are all cached starts none
            from selfimprove.backends.serve import Servers

            logs = Path(cache_dir).parent / "servers" if cache_dir else Path(model_ref).parent / ".servers"
            self.servers = Servers(settings["serve"], settings["endpoints"], model_ref, logs, settings["serve_timeout"])
        self.endpoint = Endpoint(self.servers.urls if self.servers else settings["endpoints"], self.model,
                                 settings["api_key_env"], settings["concurrency"], settings["timeout"],
                                 settings["max_retries"], backoff=settings["backoff"], section="openai")
        self._replies: list[dict] = []  # without a cache: the replies of this process, for the usage figures
        self.usage: dict[str, float] = {}

    def sample(self, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int,
               batch_size: int, seed: int, on_batch=None) -> list[list[str]]:
        """n completions per prompt (greedy when temperature == 0, then n is forced to 1, as hf does);
        each sample with its own seed (selfimprove.backends.seeds)."""
        n = 1 if temperature == 0 else n
        bodies = [self._body(prompt, temperature, top_p, max_new_tokens, sample_seed(seed, i, j))
                  for i, prompt in enumerate(prompts) for j in range(n)]
        if self.servers and not self.servers.processes and not (self.cache and all(map(self.cache.has, bodies))):
            self.servers.start()
        path = "/chat/completions" if self.chat_template else "/completions"
        replies = self.endpoint.post_all(bodies, path, self.cache,
                                         on_done=(lambda done: on_batch(done // n)) if on_batch else None)
        if self.cache is None:
            self._replies.extend(replies)
        texts = [self._text(reply) for reply in replies]
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _body(self, prompt: str, temperature: float, top_p: float, max_tokens: int, seed: int) -> dict:
        body = {"model": self.model, "n": 1, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                "seed": seed}
        if self.chat_template:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def _text(self, reply: dict) -> str:
        choice = reply["choices"][0]
        return (choice["message"]["content"] if self.chat_template else choice["text"]) or ""

    def choice_probs(self, prompts: list[str], choices: list[str], batch_size: int = 64,
                     on_batch=None) -> list[list[float]]:
        raise UserError("backend: openai cannot read next-token probabilities over HTTP (the choice's token "
                        "depends on the model's tokenizer); use judge.mode generate, or backend hf or vllm")

    def _totals(self) -> dict[str, float]:
        """Tokens of every reply this stage holds (in the cache: including those from an interrupted earlier
        run, which were paid for too), requests sent by this process, replies replayed from the cache,
        and the cost where prices are set."""
        replies = self.cache.replies() if self.cache else self._replies
        prompt_tokens = sum((r.get("usage") or {}).get("prompt_tokens", 0) for r in replies)
        completion_tokens = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in replies)
        totals = {"requests_sent": self.endpoint.sent, "replies_from_cache": self.cache.hits if self.cache else 0,
                  "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        prices = self.settings["price_per_1m_input_tokens"], self.settings["price_per_1m_output_tokens"]
        if any(prices):
            totals["cost_usd"] = round((prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6, 6)
        return totals

    def close(self) -> None:
        """Stop the servers this stage started; the usage figures are final (the stage discards its
        scratch area next)."""
        if self.servers:
            self.servers.stop()
        self.usage = self._totals()
