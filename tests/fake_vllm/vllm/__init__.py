"""A fake `vllm` for tests on machines without a GPU: vLLM's documented offline API (LLM, SamplingParams,
RequestOutput with .outputs[i].text and .logprobs), its engine replaced by transformers on the CPU.

Put tests/fake_vllm on sys.path (or PYTHONPATH, which spawned workers and DVC stages inherit) and
`import vllm` finds this. Like vLLM, each request is seeded by its own SamplingParams.seed, sample j of
it with seed + j, so a text depends only on its prompt, seed and j. Every LLM construction is recorded (ENGINES in this process, and a
JSON line in $FAKE_VLLM_LOG when set, for worker processes) with its arguments and CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass, field

ENGINES: list = []  # weak references to every LLM built in this process


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    logprobs: int | None = None
    logprob_token_ids: list | None = None  # vLLM >= 0.20: exactly these tokens' logprobs (and the sampled one)


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    logprobs: list | None = None  # per generated token: {token_id: Logprob}, when SamplingParams.logprobs


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list
    outputs: list = field(default_factory=list)


class LLM:
    def __init__(self, model: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 seed: int = 0, revision: str | None = None, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.args = dict(model=model, tensor_parallel_size=tensor_parallel_size,
                         gpu_memory_utilization=gpu_memory_utilization, seed=seed, revision=revision, **kwargs,
                         cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), pid=os.getpid())
        if os.environ.get("FAKE_VLLM_LOG"):
            with open(os.environ["FAKE_VLLM_LOG"], "a") as log:
                log.write(json.dumps(self.args) + "\n")
        ENGINES.append(weakref.ref(self))
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        limit = kwargs.get("max_model_len") or self.model.config.max_position_embeddings
        self.model_config = type("ModelConfig", (), {"max_model_len": limit})()
        self.requests = 0
        self.prompt_token_ids: list[list[int]] = []  # of every sampling request, as the engine saw it

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[RequestOutput]:
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompts)
        assert len(params) == len(prompts), "vLLM: one SamplingParams per prompt, or one for all"
        return [self._request(str(i), prompt, p) for i, (prompt, p) in enumerate(zip(prompts, params))]

    def _request(self, request_id: str, prompt, params: SamplingParams) -> RequestOutput:
        import torch

        self.requests += 1
        text = prompt if isinstance(prompt, str) else None
        ids = self.tokenizer(text)["input_ids"] if text is not None else list(prompt["prompt_token_ids"])
        inputs = torch.tensor([ids])
        if params.logprobs or params.logprob_token_ids:
            return RequestOutput(request_id, text, ids, [self._top_logprobs(inputs, params)])
        if params.temperature == 0 and params.n > 1:
            raise ValueError("n must be 1 when using greedy sampling")  # as older vLLM versions refuse
        self.prompt_token_ids.append(ids)
        generator_seed = params.seed if params.seed is not None else self.args["seed"]
        sampling = dict(do_sample=False) if params.temperature == 0 else dict(
            do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        rows = []
        for j in range(params.n):  # as vLLM: sample j of a request is seeded with seed + j
            torch.manual_seed(generator_seed + j)
            with torch.no_grad():
                generated = self.model.generate(inputs, attention_mask=torch.ones_like(inputs),
                                                max_new_tokens=params.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                                **sampling)
            rows.append(generated[0, len(ids):].tolist())
        outputs = []
        for j, row in enumerate(rows):
            if self.tokenizer.eos_token_id in row:  # vLLM stops at EOS and leaves it out of the text
                row = row[:row.index(self.tokenizer.eos_token_id)]
            row = [t for t in row if t != self.tokenizer.pad_token_id]
            outputs.append(CompletionOutput(j, self.tokenizer.decode(row, skip_special_tokens=True), row))
        return RequestOutput(request_id, text, ids, outputs)

    def _top_logprobs(self, inputs, params: SamplingParams) -> CompletionOutput:
        """One greedy token and the top-`logprobs` next-token logprobs (the sampled token included, as vLLM)."""
        import torch

        if params.max_tokens != 1:
            raise NotImplementedError("the fake returns logprobs for one generated token only")
        with torch.no_grad():
            logprobs = torch.log_softmax(self.model(inputs).logits[0, -1].float(), dim=-1)
        if params.logprobs and params.logprobs > logprobs.numel():
            raise ValueError(f"Requested {params.logprobs} logprobs, more than the vocabulary ({logprobs.numel()})")
        ranks = torch.argsort(logprobs, descending=True)
        first = int(ranks[0])
        wanted = [int(t) for t in ranks[:params.logprobs]] if params.logprobs else list(params.logprob_token_ids) + [first]
        position = {int(t): rank + 1 for rank, t in enumerate(ranks)}
        top = {t: Logprob(float(logprobs[t]), position[t], self.tokenizer.decode([t])) for t in wanted}
        return CompletionOutput(0, self.tokenizer.decode([first]), [first], [top])
