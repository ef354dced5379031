"""The vllm backend on the run's warm engine (`engine: warm`): a stage sends its requests to the one vLLM
server the run keeps (selfimprove.pipeline.engine_broker) instead of starting an engine of its own.

    backend: vllm
    engine: warm
    warm_engine: {start_timeout: 900, sleep: auto}

The requests are the ones the offline engine gets (VLLMBackend): one per sample with the same hashed
seed, the same prompt text (or, with a chat template, the same token ids), greedy with top_p 1. So a
stage computes the same thing either way and its DVC identity does not change; where the texts may
still differ is batching (vLLM's batch-invariant mode, vllm.batch_invariant, removes that; see
benchmarks/README.md for what was measured). Replies are kept in the stage's scratch area: when the
engine dies mid-stage the broker restarts it once and only what never came back is sent again.

When the broker cannot serve the model (it says why, once per run), the stage starts its own engine,
exactly as without `engine: warm`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from selfimprove.backends.openai_client import Endpoint, ResponseCache, Unreachable
from selfimprove.backends.seeds import sample_seed
from selfimprove.core import warm_link
from selfimprove.core.errors import UserError
from selfimprove.core.stage import Setting

ENGINES = ("stage", "warm")  # the loop's engine: key

SETTINGS = {  # the loop file's warm_engine: section (engine: warm)
    "start_timeout": Setting(float, 900.0, "seconds the engine may take to answer after it starts",
                             check=lambda v: v > 0, fix="must be > 0 seconds"),
    "sleep": Setting(str, "auto", "put the engine to sleep while a stage loads a model of its own (training): "
                     "auto (on a GPU), on, off", choices=("auto", "on", "off")),
    "max_lora_rank": Setting(int, 0, "the LoRA rank the engine holds (0: the sum of the loop's LoRA ranks, "
                             "rounded up to a rank vLLM takes)", check=lambda v: v >= 0, fix="must be >= 0"),
    "args": Setting(str, "", "more flags for the vLLM server, e.g. --enforce-eager"),
    "concurrency": Setting(int, 64, "requests a stage keeps in flight to the engine", check=lambda v: v >= 1,
                           fix="must be >= 1"),
}
REQUEST_TIMEOUT = 3600.0  # seconds per request: the engine is ours and may be busy with a whole stage


class WarmBackend:
    SETTINGS = SETTINGS

    @classmethod
    def open(cls, model_ref: str, revision: str | None, settings: dict, chat_template: bool, scratch):
        return cls(model_ref, revision, settings, chat_template, scratch)

    def __init__(self, model_ref: str, revision: str | None, settings: dict, chat_template: bool, scratch):
        self.model_ref, self.revision, self.settings, self.chat_template = model_ref, revision, settings, chat_template
        self.scratch = Path(scratch) if scratch else None
        self.usage: dict[str, float] = {}  # as the offline engine: a stage's figures do not depend on the engine
        self.endpoint = self.cache = self._own = self._tokenizer = None

    def _own_engine(self):
        """None while the warm engine serves this model; else the stage's own engine (VLLMBackend), when
        the broker says it cannot serve it or no broker answers (a variable left from an ended run). Asked
        at first use, so a stage whose shards are all reused touches no engine."""
        if self.endpoint is None and self._own is None:
            self._acquire()
        return self._own

    def _acquire(self) -> None:
        """Ask the broker to make this model current; keep the URL and name it serves it under."""
        from selfimprove.backends.vllm import VLLMBackend

        local = Path(self.model_ref)
        try:
            reply = warm_link.ask("/acquire", {"model": str(local.resolve()) if local.exists() else self.model_ref,
                                               "revision": self.revision})
        except warm_link.BrokerGone as gone:
            reply = {"fallback": str(gone)}
            print(f"note: {gone}; this stage starts its own engine", file=sys.stderr)
        if "error" in reply:
            raise UserError(reply["error"])
        if "fallback" in reply:
            self._own = VLLMBackend(self.model_ref, self.revision, self.settings, self.chat_template,
                                    self.scratch / "merged" if self.scratch else None)
            return
        self.endpoint = Endpoint(reply["url"], reply["model"], concurrency=reply["concurrency"],
                                 timeout=REQUEST_TIMEOUT, max_retries=1, backoff=1.0, section="engine")
        if self.scratch:  # one folder per model: a stage may sample from two (a policy and its judge)
            self.cache = ResponseCache(self.scratch / "requests" / reply["key"])

    def _post_all(self, bodies: list[dict], on_done=None) -> list[dict]:
        """Every body's reply; when the engine stopped answering, the broker restarts it (once per run) and
        what did not come back is sent again. The model is made current again first: the stage's other
        backend (a judge) may have used the engine since."""
        self._acquire()
        for body in bodies:
            body["model"] = self.endpoint.model
        try:
            return self.endpoint.post_all(bodies, "/completions", self.cache, on_done=on_done)
        except Unreachable:
            self._acquire()
            for body in bodies:
                body["model"] = self.endpoint.model
            return self.endpoint.post_all(bodies, "/completions", self.cache, on_done=on_done)

    def tokenizer(self):
        if self._tokenizer is None:
            from selfimprove.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_ref, self.revision)
        return self._tokenizer

    def sample(self, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int,
               batch_size: int, seed: int, on_batch=None) -> list[list[str]]:
        """As VLLMBackend.sample: one request per sample with its own seed; greedy forces n = 1."""
        if own := self._own_engine():
            return own.sample(prompts, n, temperature, top_p, max_new_tokens, batch_size, seed, on_batch)
        n = 1 if temperature == 0 else n
        inputs = self._inputs(prompts)
        bodies = [{"prompt": inputs[i], "n": 1, "temperature": temperature,
                   "top_p": 1.0 if temperature == 0 else top_p, "max_tokens": max_new_tokens,
                   "seed": sample_seed(seed, i, j)} for i in range(len(prompts)) for j in range(n)]
        replies = self._post_all(bodies, on_done=(lambda done: on_batch(done // n)) if on_batch else None)
        texts = [reply["choices"][0]["text"] or "" for reply in replies]
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _inputs(self, prompts: list[str]) -> list:
        """The text, or with a chat template the rendered chat's token ids (its BOS already in the text),
        as the offline engine is given them; prompts too long for the engine are named first."""
        from selfimprove.backends.vllm import check_prompt_lengths

        tokenizer = self.tokenizer()
        if self.chat_template:
            from selfimprove.backends import chat_prompts

            inputs = [tokenizer(text, add_special_tokens=False)["input_ids"]
                      for text in chat_prompts(tokenizer, prompts)]
        else:
            inputs = list(prompts)
        check_prompt_lengths(_Lengths(tokenizer, self.settings.get("max_model_len")),
                             [{"prompt_token_ids": i} if isinstance(i, list) else i for i in inputs])
        return inputs

    def choice_probs(self, prompts: list[str], choices: list[str], batch_size: int = 64,
                     on_batch=None) -> list[list[float]]:
        """As VLLMBackend.choice_probs: each choice's first-token probability after the prompt, cut at the
        seam the same way, read from the engine's logprobs of exactly those tokens."""
        from selfimprove.backends.vllm import MAX_LOGPROB_TOKEN_IDS, choice_probabilities, choice_requests

        if own := self._own_engine():
            return own.choice_probs(prompts, choices, batch_size, on_batch)
        targets, wanted = choice_requests(self.tokenizer(), prompts, choices)
        if any(len(tokens) > MAX_LOGPROB_TOKEN_IDS for tokens in wanted.values()):
            raise UserError(f"engine: more than {MAX_LOGPROB_TOKEN_IDS} choices after one context; use fewer choices")
        bodies = [{"prompt": list(context), "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                   "logprob_token_ids": tokens, "return_tokens_as_token_ids": True}
                  for context, tokens in wanted.items()]
        replies = self._post_all(bodies)
        probs = choice_probabilities(targets, {context: _token_logprobs(reply)
                                               for context, reply in zip(wanted, replies)})
        if on_batch:
            on_batch(len(probs))
        return probs

    def close(self) -> None:
        """The stage's own engine, if it started one, is stopped; the warm engine is the run's (the broker
        puts it to sleep when a stage needs the memory)."""
        if self._own is not None:
            self._own.close()


def _token_logprobs(reply: dict) -> dict[int, float]:
    """{token id: logprob} of the first generated position, from a reply with return_tokens_as_token_ids."""
    top = reply["choices"][0]["logprobs"]["top_logprobs"][0]
    return {int(key.split(":", 1)[1]): value for key, value in top.items()}


class _Lengths:
    """What check_prompt_lengths reads of an engine: its tokenizer and context length (vllm.max_model_len,
    or the model's own)."""

    def __init__(self, tokenizer, max_model_len: int | None):
        self.tokenizer = tokenizer
        limit = max_model_len or getattr(tokenizer, "model_max_length", None)
        self.model_config = type("ModelConfig", (), {"max_model_len": limit if limit and limit < 10**9 else None})()

    def get_tokenizer(self):
        return self.tokenizer
