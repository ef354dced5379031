"""The run's warm engine (`engine: warm`, selfimprove.pipeline.engine_broker) against the fake vLLM server
(tests/fake_vllm/vllm/entrypoints/openai/api_server.py: vLLM's HTTP endpoints over the fake engine).

One warm run goes through everything the engine does in a loop: its start on the base model, a whole
model's weights reloaded in place (iteration 1 fine-tunes fully), a chain of two LoRA adapters served as
one stacked adapter on it, sleeps around training, and a death mid-stage with its restart. It must
write exactly what the same loop writes with an engine per stage. The real engine is exercised in
tests/test_vllm_real.py (the vllm_real tier). The loop runs take minutes: they are marked slow, and CI
runs them in a step of their own (.ci/run).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfimprove.pipeline.engine_server import marked

ROOT = Path(__file__).resolve().parent.parent

LOOP = """\
name: w
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 8, eval_size: 8, digits: 2}
iterations: 3
bootstrap: {steps: 40, batch_size: 16, digits: 2, layers: 1}
backend: vllm
engine: ENGINE
warm_engine: {sleep: "on"}
stages:
  generate: {n: 4, max_new_tokens: 24}
  pairs: {min_votes: 0.25}
  train: {batch_size: 2, lr: 1.0e-3, max_length: 48, lora_r: 4, lora_alpha: 8}
  evaluate: {k: 2, max_new_tokens: 24}
schedule:
  1: {train: {lora_r: 0, lr: 1.0e-4}}
"""
OUTPUTS = ["it0/outputs.jsonl", "it1/samples.jsonl", "it2/samples.jsonl", "it3/samples.jsonl", "it3/pairs.jsonl",
           "it3/outputs.jsonl", "it3/metrics.json", "it2/model/adapter_model.safetensors",
           "it2/model/adapter_config.json", "it1/model/model.safetensors"]


def _run(project: Path, engine: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    project.mkdir(exist_ok=True)
    (project / "loop.yaml").write_text(LOOP.replace("ENGINE", engine))
    return subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml", *extra], cwd=project,
                          capture_output=True, text=True, timeout=900, env=env)


def _events(project: Path) -> list[dict]:
    path = project / "runs/w/engine/events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The loop run with an engine per stage, then with the warm engine (which dies at its 40th request)."""
    from conftest import FAKE_VLLM

    base = tmp_path_factory.mktemp("warm")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE_VLLM), str(ROOT)]),
               FAKE_VLLM_LOG=str(base / "engines.jsonl"))
    per_stage = _run(base / "per_stage", "stage", env)
    assert per_stage.returncode == 0, per_stage.stdout[-2000:] + per_stage.stderr[-2000:]
    env = dict(env, FAKE_VLLM_LOG=str(base / "warm_engines.jsonl"), FAKE_VLLM_SERVER_LOG=str(base / "calls.jsonl"),
               FAKE_VLLM_DIE_ONCE=f"{base / 'died'}:40")
    warm = _run(base / "warm", "warm", env)
    assert warm.returncode == 0, warm.stdout[-2000:] + warm.stderr[-2000:]
    return base, warm, env


@pytest.mark.slow
def test_the_warm_engine_writes_what_an_engine_per_stage_writes_with_the_same_pipeline(runs):
    base, _, _ = runs
    for name in ("dvc.yaml", "params.yaml"):  # the engine is no part of any stage's identity
        assert (base / "warm" / name).read_text() == (base / "per_stage" / name).read_text()
    for output in OUTPUTS:
        assert (base / "warm/runs/w" / output).read_bytes() == (base / "per_stage/runs/w" / output).read_bytes(), output
    metrics = json.loads((base / "warm/runs/w/it3/metrics.json").read_text())
    assert metrics["problems"] == 8
    # identical trainings in two processes write identical model directories (what DVC hashes)
    for k in (1, 2, 3):
        files = sorted(p.name for p in (base / f"warm/runs/w/it{k}/model").iterdir())
        assert "training_args.bin" not in files
        assert all((base / f"warm/runs/w/it{k}/model" / f).read_bytes()
                   == (base / f"per_stage/runs/w/it{k}/model" / f).read_bytes() for f in files)


@pytest.mark.slow
def test_one_engine_serves_the_run_and_follows_the_policy_through_reloads_and_stacked_adapters(runs):
    base, warm, _ = runs
    per_stage = [json.loads(line) for line in (base / "engines.jsonl").read_text().splitlines()]
    # an engine per sampling stage: it0 evaluate, then generate and evaluate of each iteration
    assert len(per_stage) == 7
    events = _events(base / "warm")
    kinds = [event["event"] for event in events]
    assert kinds.count("start") == 2 and kinds.count("died") == 1  # one start, one restart after the death
    reloads = [e["model"] for e in events if e["event"] == "reload"]
    assert reloads and all(model.endswith("runs/w/it1/model") for model in reloads)  # the full fine-tune
    adapters = [(Path(e["model"]).parent.name, e["rank"]) for e in events if e["event"] == "load_adapter"]
    assert ("it2", 4) in adapters and ("it3", 8) in adapters  # iteration 3: two adapters stacked, rank 4 + 4
    assert "engine: starting vLLM on runs/builtin/" in warm.stdout and "restarting it once" in warm.stdout
    calls = [json.loads(line) for line in (base / "calls.jsonl").read_text().splitlines()]
    changes = [c["event"] for c in calls if c["event"] in ("v1/load_lora_adapter", "collective_rpc",
                                                           "reset_prefix_cache")]
    # every change of weights is followed by a reset of the prefix cache before any request uses it
    assert all(after == "reset_prefix_cache" for before, after in zip(changes, changes[1:])
               if before != "reset_prefix_cache")


@pytest.mark.slow
def test_the_engine_sleeps_while_training_takes_the_memory(runs):
    base, _, _ = runs
    calls = [json.loads(line) for line in (base / "calls.jsonl").read_text().splitlines()]
    sleeps = [c for c in calls if c["event"] == "sleep"]
    assert sleeps and all(c["level"] == "2" for c in sleeps)  # iteration 1 changes the whole weights
    for k in (1, 2, 3):  # each training ran while the engine slept (the fake refuses requests asleep)
        trained = (base / f"warm/runs/w/it{k}/model").stat().st_mtime
        slept = max(c["time"] for c in sleeps if c["time"] < trained)
        woke = [c["time"] for c in calls if c["event"] == "wake_up" and c["time"] > slept]
        assert not woke or min(woke) > trained


@pytest.mark.slow
def test_nothing_of_the_engine_is_left_and_a_run_with_nothing_to_do_starts_none(runs):
    base, _, env = runs
    assert not marked(f"{base / 'warm'}/")  # the server, its child, and the dead server's orphaned child
    before = len(_events(base / "warm"))
    again = _run(base / "warm", "warm", env)
    assert again.returncode == 0 and "0 stage(s) ran" in again.stdout
    assert len(_events(base / "warm")) == before


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c", "sigkill"])
def test_an_interrupted_or_killed_run_leaves_no_engine_process(runs, tmp_path, how):
    """Ctrl-C reaches the run's process group; a SIGKILL of selfimprove alone reaches the server through
    the kernel (PR_SET_PDEATHSIG), and its engine core through the marker the next run looks for."""
    _, _, env = runs
    env = {k: v for k, v in env.items() if k != "FAKE_VLLM_DIE_ONCE"}
    (tmp_path / "loop.yaml").write_text(LOOP.replace("ENGINE", "warm"))
    run = subprocess.Popen([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(lambda: any(e["event"] == "start" for e in _events(tmp_path)), 300)
        assert marked(f"{tmp_path}/")
        if how == "ctrl_c":
            os.killpg(run.pid, signal.SIGINT)
            assert run.wait(120) == 130
            assert not marked(f"{tmp_path}/")
        else:
            os.kill(run.pid, signal.SIGKILL)
            run.wait(30)
            server_gone = lambda: not [p for p in marked(f"{tmp_path}/") if "api_server" in " ".join(p.cmdline())]
            _wait_for(server_gone, 60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        _stop_group_leftovers(run.pid)
    if how == "sigkill":  # the next run of the project stops what the killed one left (the engine core)
        again = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml", "--set", "iterations=1",
                                "--set", "evaluate.k=1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert not marked(f"{tmp_path}/")


def _stop_group_leftovers(group: int) -> None:
    """dvc and its stage, left by the SIGKILL of selfimprove alone (what a rerun names), stopped here."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_variable_left_from_an_ended_run_means_the_stages_own_engine(fake_vllm, tiny_model, monkeypatch, tmp_path):
    from selfimprove.backends import open_backend
    from selfimprove.backends.serve import free_port

    monkeypatch.setenv("SELFIMPROVE_ENGINE", f"http://127.0.0.1:{free_port()}/0123")
    backend = open_backend({"backend": "vllm"}, tiny_model, scratch=tmp_path)
    texts = backend.sample(["1+1=", "2+3="], 2, 1.0, 1.0, 6, 8, 3)
    assert len(fake_vllm.ENGINES) == 1  # the stage's own engine, started when no broker answered
    monkeypatch.delenv("SELFIMPROVE_ENGINE")
    assert texts == open_backend({"backend": "vllm"}, tiny_model).sample(["1+1=", "2+3="], 2, 1.0, 1.0, 6, 8, 3)


@pytest.mark.parametrize("line, expected", [
    ("engine: hot", "engine: 'hot' is not an engine; available: stage, warm"),
    ("engine: warm\nbackend: hf", "engine: warm is a vLLM server the run keeps, and the backend is hf"),
    ("backend: vllm\nengine: warm\nwarm_engine: {sleep: sometimes}", "warm_engine.sleep"),
    ("backend: vllm\nengine: warm\nwarm_engine: {start_timout: 10}", "warm_engine.start_timout"),
])
def test_engine_keys_are_checked_in_one_line(tmp_path, line, expected):
    loop = LOOP.replace("backend: vllm\nengine: ENGINE\nwarm_engine: {sleep: \"on\"}\n", line + "\n")
    (tmp_path / "loop.yaml").write_text(loop)
    result = subprocess.run([sys.executable, "-m", "selfimprove.cli", "validate", "loop.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode != 0 and expected in result.stdout + result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_the_warm_engine_answers_what_the_offline_engine_answers(fake_vllm, tiny_model, tmp_path, monkeypatch):
    """Samples and choice probabilities through the broker and the (fake) server equal the offline
    engine's on the same weights: the same requests, seeds and token ids reach both."""
    from rich.console import Console

    from selfimprove.backends import open_backend
    from selfimprove.backends.warm import SETTINGS, WarmBackend
    from selfimprove.pipeline.engine_broker import Broker

    vllm = {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.1}
    settings = {key: setting.default for key, setting in SETTINGS.items()}
    offline = open_backend({"backend": "vllm"}, tiny_model)
    prompts, choices = ["1+1=", "12+3="], ["1", "2", "3"]
    expected = offline.sample(prompts, 2, 1.0, 1.0, 6, 8, 3), offline.choice_probs(prompts, choices)
    monkeypatch.chdir(tmp_path)  # the broker answers stages of its own project only
    with Broker(tmp_path, "w", vllm, settings, 0, False, Console(file=open(os.devnull, "w"))) as broker:
        monkeypatch.setenv(*next(iter(broker.env().items())))
        warm = open_backend({"backend": "vllm"}, tiny_model, scratch=tmp_path / "scratch")
        assert isinstance(warm, WarmBackend)
        got = warm.sample(prompts, 2, 1.0, 1.0, 6, 8, 3), warm.choice_probs(prompts, choices)
    assert got[0] == expected[0]
    assert all(abs(a - b) < 1e-5 for mine, theirs in zip(got[1], expected[1]) for a, b in zip(mine, theirs))
