"""The vLLM backend: offline `vllm.LLM` generation on GPUs, `pip install 'selfimprove[vllm]'`.

    backend: vllm
    vllm: {tensor_parallel_size: 1, data_parallel_size: 1, gpu_memory_utilization: 0.9}

- tensor_parallel_size splits one model copy across GPUs (vLLM does it inside `LLM`);
- data_parallel_size > 1 starts one worker process per model copy, each seeing only its own GPUs
  (CUDA_VISIBLE_DEVICES), and gives each a contiguous slice of the prompts; results come back in order.

Every sample is a request with its own seed, hashed from the stage's seed, the prompt's position and
the sample's number: samples are independent, and the texts do not depend on how the prompts were
split between workers.
Developed without a GPU: exercised only against the fake `vllm` module in tests/fake_vllm.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from selfimprove.backends.hf import continuation_tokens
from selfimprove.backends.seeds import sample_seed
from selfimprove.core.errors import UserError
from selfimprove.core.stage import Setting

# Older vLLM (no logprob_token_ids): its default engine limit on returned logprobs (max_logprobs); asking
# for more fails, and a choice outside the 20 most likely next tokens gets probability 0.
TOP_LOGPROBS = 20
MAX_LOGPROB_TOKEN_IDS = 128  # vLLM's bound on logprob_token_ids per request


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise UserError("backend: vllm is not installed; pip install 'selfimprove[vllm]' (it needs a CUDA GPU), "
                        "or use backend: hf") from None
    return vllm


SETTINGS = {  # the loop file's vllm: section (offline vllm.LLM, one or more GPUs)
    "tensor_parallel_size": Setting(int, 1, "GPUs one model copy is split across: for a model too big for one GPU",
                                    check=lambda v: v >= 1, fix="must be >= 1"),
    "data_parallel_size": Setting(int, 1, "model copies, one process each on its own tensor_parallel_size GPUs; "
                                  "the prompts are split between them", check=lambda v: v >= 1, fix="must be >= 1"),
    "gpu_memory_utilization": Setting(float, 0.9, "share of each GPU's memory vLLM takes (weights + KV cache)",
                                      check=lambda v: 0 < v <= 1,
                                      fix="is a share of GPU memory; use a value in (0, 1], e.g. 0.9"),
    "max_model_len": Setting(int, 0, "context length to reserve KV cache for (0: the model's own); lower it on OOM"),
    "dtype": Setting(str, "auto", "weights' dtype in the engine: auto (vLLM's choice; on CPU bf16), float32, bfloat16, "
                     "float16", choices=("auto", "float32", "bfloat16", "float16"), omit_default=True),
    "batch_invariant": Setting(bool, False, "vLLM's batch-invariant kernels (VLLM_BATCH_INVARIANT): a text no longer "
                               "depends on what else is in its batch, at some speed", omit_default=True),
}


class VLLMBackend:
    SETTINGS = SETTINGS
    TRACKED = ("vllm",)  # every vllm key can change what comes back (the KV cache size changes batching)

    @classmethod
    def open(cls, model_ref: str, revision: str | None, settings: dict, chat_template: bool, scratch):
        return cls(model_ref, revision, settings, chat_template=chat_template,
                   scratch=Path(scratch) / "merged" if scratch else None)

    def __init__(self, model_ref: str, revision: str | None = None, settings: dict | None = None,
                 chat_template: bool = False, scratch: str | Path | None = None):
        self.model_ref, self.revision, self.chat_template = model_ref, revision, chat_template
        # Where a LoRA adapter's merged model is written: the stage's scratch area, removed with it.
        self.scratch = Path(scratch) if scratch else Path(model_ref).parent / f".{Path(model_ref).name}-merged"
        self.settings = {**{key: setting.default for key, setting in SETTINGS.items()}, **(settings or {})}
        self._llm = self._workers = None
        self.usage: dict[str, float] = {}

    def _engine(self):
        if self._llm is None:
            from selfimprove.core.warm_link import make_room

            vllm = import_vllm()
            make_room()  # a stage's own engine beside the run's warm one: the warm one sleeps (on a GPU)
            options = dict(model=self._weights(), revision=self.revision, seed=0,  # requests carry their own seeds
                           tensor_parallel_size=self.settings["tensor_parallel_size"],
                           gpu_memory_utilization=self.settings["gpu_memory_utilization"])
            if self.settings["max_model_len"]:
                options["max_model_len"] = self.settings["max_model_len"]
            if self.settings.get("dtype", "auto") != "auto":
                options["dtype"] = self.settings["dtype"]
            if self.settings.get("batch_invariant"):  # read by the engine's processes, which inherit it
                os.environ["VLLM_BATCH_INVARIANT"] = "1"
            self._llm = vllm.LLM(**options)
        return self._llm

    def _parallel(self) -> bool:
        return self.settings["data_parallel_size"] > 1

    def sample(self, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int,
               batch_size: int, seed: int, on_batch=None) -> list[list[str]]:
        """n completions per prompt (greedy when temperature == 0, then n is forced to 1, as hf does).
        Each sample is its own request with its own seed (sample_seed): vLLM seeds sample j of an n > 1
        request with seed + j, so per-prompt seeds would repeat across neighbouring prompts.
        batch_size is unused: vLLM schedules its own batches (continuous batching)."""
        n = 1 if temperature == 0 else n
        requests = [(prompt, sample_seed(seed, i, j)) for i, prompt in enumerate(prompts) for j in range(n)]
        options = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        if self._parallel():
            texts = self._pool().run("sample", requests, options)
        else:
            texts = self.sample_requests(requests, **options)
        if on_batch:
            on_batch(len(prompts))
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def sample_requests(self, requests: list[tuple[str, int]], temperature: float, top_p: float,
                        max_new_tokens: int) -> list[str]:
        """One completion per (prompt, seed) request, all handed to vLLM at once, in this process."""
        vllm = import_vllm()
        llm = self._engine()
        greedy = temperature == 0
        params = [vllm.SamplingParams(n=1, temperature=temperature, top_p=1.0 if greedy else top_p,
                                      max_tokens=max_new_tokens, seed=seed) for _, seed in requests]
        # n requests share each prompt: render, tokenise and check every distinct prompt once
        distinct = list(dict.fromkeys(prompt for prompt, _ in requests))
        prepared = dict(zip(distinct, self._inputs(distinct)))
        check_prompt_lengths(llm, list(prepared.values()))
        outputs = llm.generate([prepared[prompt] for prompt, _ in requests], params, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]

    def _inputs(self, prompts: list[str]) -> list:
        """What vLLM is given: the text, or with a chat template the rendered chat's token ids. The
        rendered text already holds the BOS token; tokenising it as a prompt would add a second one."""
        if not self.chat_template:
            return prompts
        from selfimprove.backends import chat_prompts

        tokenizer = self._engine().get_tokenizer()
        return [{"prompt_token_ids": tokenizer(text, add_special_tokens=False)["input_ids"]}
                for text in chat_prompts(tokenizer, prompts)]

    def choice_probs(self, prompts: list[str], choices: list[str], batch_size: int = 64,
                     on_batch=None) -> list[list[float]]:
        """For each prompt, the probability that the text continues with each choice's first token, read
        from vLLM's top-TOP_LOGPROBS next-token logprobs. The contexts are token ids, cut at the seam the
        way the hf backend cuts them (continuation_tokens), so both backends ask the same question."""
        probs = self._pool().run("choice_probs", prompts, {"choices": choices}) if self._parallel() \
            else self.choice_probs_here(prompts, choices)
        if on_batch:
            on_batch(len(probs))
        return probs

    def choice_probs_here(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        vllm = import_vllm()
        llm = self._engine()
        targets, wanted = choice_requests(llm.get_tokenizer(), prompts, choices)
        inputs = [{"prompt_token_ids": list(c)} for c in wanted]
        check_prompt_lengths(llm, inputs)
        params = [choice_params(vllm, tokens, len(llm.get_tokenizer())) for tokens in wanted.values()]
        outputs = llm.generate(inputs, params, use_tqdm=False)
        found = {context: {token: logprob.logprob for token, logprob in output.outputs[0].logprobs[0].items()}
                 for context, output in zip(wanted, outputs)}
        return choice_probabilities(targets, found)

    def _pool(self):
        if self._workers is None:
            from selfimprove.backends.vllm_workers import WorkerPool

            self._workers = WorkerPool(type(self), self._weights(), self.revision, self.settings, self.chat_template)
        return self._workers

    def _weights(self) -> str:
        """The directory vLLM loads: the model itself, or for a LoRA iteration's adapter its merged model,
        written once (vLLM reads whole weights from disk; selfimprove.models.full_weights_dir)."""
        from selfimprove.models import full_weights_dir

        return full_weights_dir(self.model_ref, self.scratch, self.revision)

    def close(self) -> None:
        """Stop the workers, or drop the engine and free its GPU memory, so training can follow."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        if self._llm is not None:
            # Stop the engine core (its own process in vLLM V1) now, not whenever the LLM is collected:
            # a stage that opens a second engine (evaluate's win-rate judge) needs the memory back first.
            core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self._llm = None
            release_gpu_memory()


def choice_requests(tokenizer, prompts: list[str], choices: list[str]) -> tuple[list, dict[tuple, list[int]]]:
    """(per prompt, its (context, token) pair for each choice, cut at the seam as the hf backend cuts it;
    each distinct context, in order, -> the sorted tokens whose log probabilities to ask for after it)."""
    targets = [continuation_tokens(tokenizer, p, choices) for p in prompts]
    wanted: dict[tuple, set] = {}
    for per_prompt in targets:
        for context, token in per_prompt:
            wanted.setdefault(context, set()).add(token)
    return targets, {context: sorted(wanted[context]) for context in sorted(wanted)}


def choice_probabilities(targets: list, found: dict[tuple, dict[int, float]]) -> list[list[float]]:
    """Each prompt's choice probabilities from the logprobs found after each context (0 where absent)."""
    return [[math.exp(found[context][token]) if token in found[context] else 0.0 for context, token in per_prompt]
            for per_prompt in targets]


def choice_params(vllm, tokens: list[int], vocabulary: int):
    """One greedy token with the log probabilities of exactly these next tokens (logprob_token_ids,
    vLLM >= 0.20); on older vLLM the top TOP_LOGPROBS, never more than the vocabulary holds."""
    if hasattr(vllm.SamplingParams(), "logprob_token_ids") and len(tokens) <= MAX_LOGPROB_TOKEN_IDS:
        return vllm.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=tokens)
    return vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=min(TOP_LOGPROBS, vocabulary))


def check_prompt_lengths(llm, inputs: list) -> None:
    """vLLM aborts a whole call when one prompt has max_model_len tokens or more: say which, first."""
    config = getattr(llm, "model_config", None) or getattr(getattr(llm, "llm_engine", None), "model_config", None)
    limit = getattr(config, "max_model_len", None)
    if not limit:
        return
    tokenizer = llm.get_tokenizer()
    for prompt in inputs:
        ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else tokenizer(prompt)["input_ids"]
        if len(ids) >= limit:
            text = prompt if isinstance(prompt, str) else tokenizer.decode(ids, skip_special_tokens=True)
            start = text[:40] + ("..." if len(text) > 40 else "")
            raise UserError(f"vllm: a prompt of {len(ids)} tokens ({start!r}) leaves no room for a completion: the "
                            f"engine's max_model_len is {limit}; raise vllm.max_model_len (up to the model's context) "
                            "or shorten the prompts (data.prompt_template, a judge template)")


def release_gpu_memory() -> None:
    """What vLLM's maintainers give as the way to free an LLM's memory in-process (vllm#6544, vllm#23793):
    tear down its distributed state, then collect and empty the CUDA cache. The call moved between
    versions, so the newest available is used."""
    import gc

    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except ImportError:
        try:
            from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except ImportError:
            pass
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
