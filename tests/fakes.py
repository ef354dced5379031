"""The one scripted model the tests put behind the backend interface (selfimprove.backends).

Like simonw/llm's MockModel, its answers are queued before a stage runs, and it records what it was
asked, so a test states a model's behaviour and asserts on what the stage did with it:

    fake = ScriptedModel()
    fake.enqueue(["Score: 5", "Score: 1"])  # sample(): n texts per prompt, taken in arrival order
    fake.enqueue_probs([[0.1, 0.9]])  # choice_probs(): one row per prompt, in arrival order
    fake.enqueue_temperatures([[0.7]])  # sample_with_temperatures(): a temperature per text, per prompt

or answers each prompt by a function of it: `ScriptedModel(reply=lambda prompt, j, rng: ...)`, with j
the sample's index and rng a random.Random(seed) shared by the call (a seeded model's sampling).

Every call is kept in `calls` (method, prompts, n, temperature, top_p, max_new_tokens, batch_size,
seed, choices, pick); `prompts` holds every prompt asked, `sampled` those given to sample /
sample_with_temperatures, `scored` those given to choice_probs, `batches` the prompts of
each call apart. It takes the interface's arguments:

    sample(prompts, n, temperature, top_p, max_new_tokens, batch_size, seed, on_batch=None) -> list[list[str]]
    sample_with_temperatures(prompts, n, top_p, max_new_tokens, batch_size, seed, pick, on_batch=None)
        -> (texts, temperatures)
    choice_probs(prompts, choices, batch_size=64, on_batch=None) -> list[list[float]]
    logprobs(prompts, completions, batch_size=64) -> list[float] (queued with enqueue_logprobs)
    close(); usage (a dict of counters, empty unless a test sets it); temperature_head (None: no head)

Running out of queued answers is an error that says which queue, not a silent default.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Call:
    """One request the model received."""

    method: str
    prompts: list[str]
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    choices: list[str] | None = None
    pick: str | None = None
    extra: dict = field(default_factory=dict)


class ScriptedModel:
    def __init__(self, reply=None, temperature_head=None):
        self.reply = reply
        self.temperature_head = temperature_head
        self.usage: dict = {}
        self.calls: list[Call] = []
        self.closed = 0
        self._texts: deque = deque()
        self._probs: deque = deque()
        self._temperatures: deque = deque()
        self._logprobs: deque = deque()

    # --- scripting -------------------------------------------------------------------------------------

    def enqueue(self, texts) -> "ScriptedModel":
        """Completions for sample(), handed out n per prompt in the order the prompts arrive."""
        self._texts.extend(texts)
        return self

    def enqueue_probs(self, rows) -> "ScriptedModel":
        """Choice probabilities for choice_probs(), one row per prompt in arrival order."""
        self._probs.extend(rows)
        return self

    def enqueue_temperatures(self, rows) -> "ScriptedModel":
        """For sample_with_temperatures(): per prompt, the temperature of each of its n texts."""
        self._temperatures.extend(rows)
        return self

    def enqueue_logprobs(self, values) -> "ScriptedModel":
        """For logprobs(): one log-probability per (prompt, completion), in arrival order."""
        self._logprobs.extend(values)
        return self

    # --- what it was asked ---------------------------------------------------------------------------

    @property
    def prompts(self) -> list[str]:
        return [p for call in self.calls for p in call.prompts]

    @property
    def batches(self) -> list[list[str]]:
        """The prompts of each call, one list per call."""
        return [call.prompts for call in self.calls]

    @property
    def sampled(self) -> list[str]:
        return [p for call in self.calls if call.method.startswith("sample") for p in call.prompts]

    @property
    def scored(self) -> list[str]:
        return [p for call in self.calls if call.method == "choice_probs" for p in call.prompts]

    @property
    def choices(self) -> list[str] | None:
        """The choices of the last choice_probs call."""
        return next((c.choices for c in reversed(self.calls) if c.method == "choice_probs"), None)

    # --- the backend interface ------------------------------------------------------------------------

    def sample(self, prompts, n, temperature, top_p, max_new_tokens, batch_size, seed, on_batch=None):
        prompts = list(prompts)
        self.calls.append(Call("sample", prompts, n, temperature, top_p, max_new_tokens, batch_size, seed))
        out = self._texts_for(prompts, n, seed)
        if on_batch:  # after each forward pass of batch_size sequences, as the hf backend does
            per_batch = max(1, (batch_size or len(out) * n) // n)
            for done in range(per_batch, len(out) + per_batch, per_batch):
                on_batch(min(done, len(out)))
        return out

    def sample_with_temperatures(self, prompts, n, top_p, max_new_tokens, batch_size, seed, pick="sample",
                                 on_batch=None):
        prompts = list(prompts)
        self.calls.append(Call("sample_with_temperatures", prompts, n, None, top_p, max_new_tokens, batch_size,
                               seed, pick=pick))
        texts = self._texts_for(prompts, n, seed)
        temperatures = [self._pop(self._temperatures, "enqueue_temperatures") for _ in prompts]
        if on_batch:
            on_batch(len(texts))
        return texts, temperatures

    def choice_probs(self, prompts, choices, batch_size=64, on_batch=None):
        prompts = list(prompts)
        self.calls.append(Call("choice_probs", prompts, batch_size=batch_size, choices=list(choices)))
        out = [self._pop(self._probs, "enqueue_probs") for _ in prompts]
        if on_batch:
            on_batch(len(out))
        return out

    def logprobs(self, prompts, completions, batch_size=64):
        prompts = list(prompts)
        self.calls.append(Call("logprobs", prompts, batch_size=batch_size, extra={"completions": list(completions)}))
        return [self._pop(self._logprobs, "enqueue_logprobs") for _ in prompts]

    def close(self) -> None:
        self.closed += 1

    # --- helpers ---------------------------------------------------------------------------------------

    def _texts_for(self, prompts: list[str], n: int, seed) -> list[list[str]]:
        if self.reply is not None:
            rng = random.Random(seed)
            return [[self.reply(p, j, rng) for j in range(n)] for p in prompts]
        return [[self._pop(self._texts, "enqueue") for _ in range(n)] for _ in prompts]

    @staticmethod
    def _pop(queue: deque, name: str):
        if not queue:
            raise AssertionError(f"ScriptedModel: nothing left to answer with; queue more with {name}()")
        return queue.popleft()
