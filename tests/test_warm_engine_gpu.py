"""The warm engine's sleep on a GPU (the gpu tier, with real vLLM): asleep, the server gives its GPU
memory back for a stage's own model (training); woken, it serves the same texts as before. Level 1
keeps the weights in CPU memory (a LoRA loop); level 2 drops them and the broker reloads them.

    .venv-vllm/bin/python -m pytest -m "gpu and vllm_real" tests/test_warm_engine_gpu.py

SELFIMPROVE_GPU_MODEL names a larger model directory to use (default: the tiny architecture, random
weights). Not run on the development machine (no GPU); see docs/scale/warm-engine.md for what was.
"""

import os

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.vllm_real]
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("vllm")

PROMPTS = ["12+34=", "7+8=", "99+1=", "40+2="]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    if os.environ.get("SELFIMPROVE_GPU_MODEL"):
        return os.environ["SELFIMPROVE_GPU_MODEL"]
    from selfimprove.stages.untrained import save_untrained

    return save_untrained(tmp_path_factory.mktemp("gpu") / "model", layers=2)


def _free_gib() -> float:
    return torch.cuda.mem_get_info()[0] / 2**30


@pytest.mark.parametrize("lora_only, level", [(True, 1), (False, 2)])
def test_the_engine_sleeps_and_wakes_with_the_same_texts(model, tmp_path, monkeypatch, lora_only, level):
    from rich.console import Console

    from selfimprove.backends.warm import SETTINGS, WarmBackend
    from selfimprove.backends.vllm import SETTINGS as VLLM
    from selfimprove.pipeline.engine_broker import Broker

    monkeypatch.chdir(tmp_path)
    vllm = {**{k: s.default for k, s in VLLM.items()}, "gpu_memory_utilization": 0.5, "max_model_len": 256}
    settings = {**{k: s.default for k, s in SETTINGS.items()}, "sleep": "on"}
    with Broker(tmp_path, "g", vllm, settings, 8, lora_only, Console()) as broker:
        monkeypatch.setenv(*next(iter(broker.env().items())))
        before = WarmBackend(model, None, vllm, False, tmp_path / "a").sample(PROMPTS, 1, 0.0, 1.0, 16, 8, 0)
        awake = _free_gib()
        broker.room()
        assert broker.asleep == level
        asleep = _free_gib()
        assert asleep - awake > 0.4 * 0.5 * torch.cuda.get_device_properties(0).total_memory / 2**30
        after = WarmBackend(model, None, vllm, False, tmp_path / "b").sample(PROMPTS, 1, 0.0, 1.0, 16, 8, 0)
        assert after == before and not broker.asleep
