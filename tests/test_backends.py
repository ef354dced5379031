"""The vLLM backend against the fake `vllm` (tests/fake_vllm: vLLM's API over transformers on the CPU):
settings reach the engine, texts come back n per prompt in order and agree with the hf backend on the
same weights, data-parallel workers split and reassemble the prompts, memory is released, a missing
vLLM is one line naming the fix. Also a whole one-iteration loop through the CLI with `backend=vllm`.
No GPU here: what real vLLM does on one is not verified by these tests."""

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfimprove.backends import open_backend
from selfimprove.backends.hf import HFBackend
from selfimprove.backends.vllm_workers import contiguous_slices, device_groups
from selfimprove.core.errors import UserError

PROMPTS = ["12+34=", "5+6=", "987+654=", "40+2=", "7+70="]


def vllm_backend(model: str, **settings):
    return open_backend({"backend": "vllm", "vllm": settings}, model)


def test_settings_reach_the_engine_and_texts_come_back_n_per_prompt_in_order(fake_vllm, tiny_model):
    backend = vllm_backend(tiny_model, tensor_parallel_size=2, gpu_memory_utilization=0.42, max_model_len=96)
    texts = backend.sample(PROMPTS, 3, 0.9, 0.9, 8, 64, seed=7)
    engine = fake_vllm.ENGINES[-1]()
    assert {k: engine.args[k] for k in ("model", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len")} \
        == {"model": tiny_model, "tensor_parallel_size": 2, "gpu_memory_utilization": 0.42, "max_model_len": 96}
    assert [len(t) for t in texts] == [3] * len(PROMPTS)
    assert len({text for per_prompt in texts for text in per_prompt}) > 5  # sampled, not one repeated text
    # A prompt's texts depend on its prompt, the call's seed and its position only (not on the others).
    assert backend.sample(PROMPTS[:2] + ["1+1="], 3, 0.9, 0.9, 8, 64, seed=7)[:2] == texts[:2]
    assert backend.sample(PROMPTS, 3, 0.9, 0.9, 8, 64, seed=7) == texts
    assert backend.sample(PROMPTS, 3, 0.9, 0.9, 8, 64, seed=8) != texts


def test_greedy_forces_one_text_and_matches_the_hf_backend_on_the_same_weights(fake_vllm, tiny_model):
    ours = vllm_backend(tiny_model).sample(PROMPTS, 4, 0.0, 0.9, 10, 64, seed=3)
    assert ours == HFBackend(tiny_model).sample(PROMPTS, 4, 0.0, 0.9, 10, 64, seed=3)
    assert all(len(t) == 1 and len(t[0]) > 0 for t in ours)


def test_choice_probabilities_agree_with_the_hf_backend(fake_vllm, tiny_model):
    prompts = [p + "1" for p in PROMPTS]
    choices = ["0", "1", "2", "3", "#"]
    ours = vllm_backend(tiny_model).choice_probs(prompts, choices)
    theirs = HFBackend(tiny_model).choice_probs(prompts, choices)
    assert [row for row in ours] == [pytest.approx(row, abs=1e-6) for row in theirs]
    assert all(0 < sum(row) < 1 for row in ours)


def test_close_drops_the_engine_so_its_memory_can_be_freed(fake_vllm, tiny_model):
    backend = vllm_backend(tiny_model)
    backend.sample(PROMPTS[:1], 1, 0.0, 1.0, 4, 8, seed=0)
    engine = fake_vllm.ENGINES[-1]
    assert engine() is not None
    backend.close()
    gc.collect()
    assert engine() is None, "something still holds the LLM after close(): its GPU memory would stay taken"


def test_a_missing_vllm_is_one_line_naming_the_install(monkeypatch, tiny_model):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(UserError, match=r"vllm is not installed; pip install 'selfimprove\[vllm\]'") as error:
        vllm_backend(tiny_model).sample(PROMPTS, 1, 0.0, 1.0, 4, 8, seed=0)
    assert len(error.value.lines) == 1


def test_chat_template_wraps_prompts_the_same_way_in_hf_and_vllm(fake_vllm, tiny_model, tmp_path):
    from transformers import AutoTokenizer

    model = tmp_path / "chat"
    for f in Path(tiny_model).iterdir():
        (model / f.name).parent.mkdir(exist_ok=True)
        (model / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match="tokenizer has no chat template"):
        open_backend({"chat_template": True}, str(model)).sample(PROMPTS, 1, 0.0, 1.0, 6, 8, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = "{% for m in messages %}#{{ m['content'] }};{% endfor %}{% if add_generation_prompt %}r{% endif %}"
    tokenizer.save_pretrained(model)
    hf = open_backend({"chat_template": True}, str(model)).sample(PROMPTS, 1, 0.0, 1.0, 6, 8, seed=0)
    vllm = open_backend({"backend": "vllm", "chat_template": True}, str(model)).sample(PROMPTS, 1, 0.0, 1.0, 6, 8, seed=0)
    assert hf == vllm  # both sampled from the prompts as the template wraps them:
    assert hf == HFBackend(str(model)).sample([f"#{p};r" for p in PROMPTS], 1, 0.0, 1.0, 6, 8, seed=0)


def test_slices_are_contiguous_balanced_and_devices_grouped_per_copy():
    assert contiguous_slices(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert contiguous_slices([1], 2) == [[1], []]
    assert device_groups(["4", "5", "6", "7"], copies=2, per_copy=2) == ["4,5", "6,7"]
    assert device_groups(["0", "1", "2"], copies=3, per_copy=1) == ["0", "1", "2"]
    with pytest.raises(UserError, match="need 4 GPUs, 3 visible"):
        device_groups(["0", "1", "2"], copies=2, per_copy=2)


def test_data_parallel_workers_each_own_their_gpu_and_return_the_single_process_result(fake_vllm, tiny_model,
                                                                                       tmp_path, monkeypatch):
    log = tmp_path / "engines.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    single = vllm_backend(tiny_model).sample(PROMPTS, 2, 0.9, 0.9, 8, 64, seed=11)
    probs = vllm_backend(tiny_model).choice_probs(PROMPTS, ["1", "2"])
    log.unlink()
    backend = vllm_backend(tiny_model, data_parallel_size=2)
    try:
        assert backend.sample(PROMPTS, 2, 0.9, 0.9, 8, 64, seed=11) == single
        assert backend.choice_probs(PROMPTS, ["1", "2"]) == probs
        assert backend.sample(PROMPTS[:1], 2, 0.9, 0.9, 8, 64, seed=11) == single[:1]  # one worker gets nothing
    finally:
        backend.close()
    engines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(e["cuda_visible_devices"] for e in engines) == ["0", "1"]  # one engine per worker, loaded once
    assert os.getpid() not in {e["pid"] for e in engines} and len({e["pid"] for e in engines}) == 2


LOOP = """\
name: v
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 8, eval_size: 8, digits: 2}
iterations: 1
bootstrap: {steps: 40, batch_size: 16, digits: 2, layers: 1}
stages:
  generate: {n: 4, max_new_tokens: 24}
  pairs: {min_votes: 0.25}
  train: {batch_size: 2, lr: 1.0e-4, max_length: 48}
  evaluate: {k: 2, max_new_tokens: 24}
"""


def test_a_loop_runs_end_to_end_on_the_vllm_backend_with_one_override(fake_vllm, tmp_path, monkeypatch):
    log = tmp_path / "engines.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    (tmp_path / "loop.yaml").write_text(LOOP)
    command = [sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml", "--set", "backend=vllm",
               "--set", "vllm.gpu_memory_utilization=0.5"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    engines = [json.loads(line) for line in log.read_text().splitlines()]
    # it0 evaluate, it1 generate and it1 evaluate each load the model in vLLM; training stays with TRL.
    # its own build of tiny-arith (runs/builtin/tiny-arith-<hash>): the loop bootstraps it another way
    assert sum(e["model"].startswith("runs/builtin/tiny-arith-") for e in engines) == 2
    assert [e["model"] for e in engines].count("runs/v/it1/model") == 1
    assert all(e["gpu_memory_utilization"] == 0.5 for e in engines)
    stats = json.loads((tmp_path / "runs/v/it1/generate.json").read_text())
    assert stats["generate_prompts"] == 8 and stats["generate_samples"] == 32
    metrics = json.loads((tmp_path / "runs/v/metrics.json").read_text())
    assert metrics["it1"]["problems"] == 8 and metrics["it1"]["generate_samples"] == 32
    params = (tmp_path / "params.yaml").read_text()
    assert "backend: vllm" in params and "v.vllm" in (tmp_path / "dvc.yaml").read_text()


def test_a_lora_adapter_reaches_vllm_as_its_merged_model(fake_vllm, tiny_model, tmp_path):
    """vLLM reads whole weights from disk: an adapter directory (a LoRA iteration's output) is merged
    once into the stage's scratch area, and vLLM's texts are the hf backend's, which merges in memory."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    adapter = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "it1")  # as the train stage saves a LoRA iteration: adapter + tokenizer
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "it1")
    backend = open_backend({"backend": "vllm", "vllm": {}}, str(tmp_path / "it1"), scratch=tmp_path / "scratch")
    texts = backend.sample(PROMPTS, 1, 0.0, 1.0, 8, 64, seed=0)
    loaded = fake_vllm.ENGINES[-1]().args["model"]
    assert Path(loaded).parent == tmp_path / "scratch" / "merged" and (Path(loaded) / "config.json").is_file()
    assert texts == HFBackend(str(tmp_path / "it1")).sample(PROMPTS, 1, 0.0, 1.0, 8, 64, seed=0)
    assert texts != HFBackend(tiny_model).sample(PROMPTS, 1, 0.0, 1.0, 8, 64, seed=0)  # the adapter counts


def shifted_repeats(texts: list[list[str]]) -> int:
    """How often prompt i's sample j+1 equals prompt i+1's sample j: what per-prompt seeds s + i give
    on vLLM, which seeds sample j of a request with s + j (the same prompt three times shows it)."""
    return sum(texts[i][j + 1] == texts[i + 1][j] for i in range(len(texts) - 1) for j in range(len(texts[i]) - 1))


def test_samples_are_independent_across_prompts_and_samples(fake_vllm, tiny_model):
    backend = vllm_backend(tiny_model)
    texts = backend.sample(["1+1="] * 3, 4, 1.0, 1.0, 10, 64, seed=5)
    assert shifted_repeats(texts) == 0 and len({t for row in texts for t in row}) == 12
    assert texts == backend.sample(["1+1="] * 3, 4, 1.0, 1.0, 10, 64, seed=5)  # seeded: the same again
    assert texts != backend.sample(["1+1="] * 3, 4, 1.0, 1.0, 10, 64, seed=6)


def test_a_rendered_chat_reaches_the_model_with_one_bos(fake_vllm, tiny_model, tmp_path):
    from transformers import AutoTokenizer

    model = tmp_path / "chat"
    model.mkdir()
    for f in Path(tiny_model).iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    tokenizer = AutoTokenizer.from_pretrained(model)
    # Llama-style: the template writes the BOS itself, and the tokenizer adds one to plain text too.
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}#{{ m['content'] }};{% endfor %}r"
    tokenizer.save_pretrained(model)
    raw = HFBackend(str(model)).sample([f"#{p};r" for p in PROMPTS], 1, 0.0, 1.0, 6, 8, seed=0)  # one BOS, added
    assert open_backend({"chat_template": True}, str(model)).sample(PROMPTS, 1, 0.0, 1.0, 6, 8, seed=0) == raw
    backend = open_backend({"backend": "vllm", "chat_template": True}, str(model))
    assert backend.sample(PROMPTS, 1, 0.0, 1.0, 6, 8, seed=0) == raw
    seen = fake_vllm.ENGINES[-1]().prompt_token_ids
    assert [ids.count(tokenizer.bos_token_id) for ids in seen] == [1] * len(PROMPTS)


def test_an_error_with_data_parallel_workers_running_ends_the_process(fake_vllm, tiny_model, tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(f"""
from selfimprove.backends import open_backend
if __name__ == "__main__":
    backend = open_backend({{"backend": "vllm", "vllm": {{"data_parallel_size": 2}}}}, {tiny_model!r})
    backend.sample(["1+1="], 1, 0.0, 1.0, 4, 8, seed=0)  # the two workers are up, waiting for the next call
    raise RuntimeError("a bug in the stage")
""")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1 and "RuntimeError: a bug in the stage" in result.stderr


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> str:
    """Random weights over 44 tokens: more next tokens than the 20 most likely."""
    from selfimprove.stages.untrained import save_untrained

    return save_untrained(tmp_path_factory.mktemp("wide") / "model", layers=1, chars=list("0123456789abcdefghijklmnopqrstuvwxyz+=#; "))


def test_choice_probabilities_are_exact_beyond_the_top_20(fake_vllm, wide_model):
    choices = list("0123456789abcdefghijklmnopqrstuvwxyz")  # 36 choices: at least 16 outside any top 20
    ours = vllm_backend(wide_model).choice_probs(PROMPTS, choices)
    theirs = HFBackend(wide_model).choice_probs(PROMPTS, choices)
    assert [row for row in ours] == [pytest.approx(row, abs=1e-6) for row in theirs]
    assert all(min(row) > 0 for row in ours)


def test_a_prompt_longer_than_the_engine_allows_is_one_line_before_any_work(fake_vllm, tiny_model):
    backend = vllm_backend(tiny_model, max_model_len=16)
    with pytest.raises(UserError, match=r"vllm: a prompt of 17 tokens \('1234567\+12345678'\) leaves no room .* max_model_len is 16;"):
        backend.sample(["1+1=", "1234567+12345678"], 2, 1.0, 1.0, 4, 8, seed=0)  # 16 characters and the BOS
    assert fake_vllm.ENGINES[-1]().requests == 0


def test_workers_take_disjoint_port_ranges(monkeypatch):
    from selfimprove.backends.vllm_workers import port_ranges

    monkeypatch.setenv("VLLM_PORT", "20000")
    assert port_ranges(3) == [20000, 20064, 20128]
    monkeypatch.delenv("VLLM_PORT")
    ranges = port_ranges(2)
    assert ranges[1] - ranges[0] == 64 and ranges[1] + 64 <= 65535


def test_the_next_chunk_goes_to_the_first_idle_worker_and_results_keep_their_order():
    import multiprocessing
    import threading
    import time

    from selfimprove.backends.vllm_workers import WorkerPool

    served = {0: 0, 1: 0}

    def worker(rank: int, pipe, delay: float):  # a stand-in for a worker process: doubles each item
        while (call := pipe.recv()) is not None:
            time.sleep(delay)
            served[rank] += 1
            pipe.send(("ok", [2 * x for x in call[1]]))

    pool = WorkerPool.__new__(WorkerPool)
    pool.pipes, threads = [], []
    for rank, delay in ((0, 0.3), (1, 0.0)):  # copy 0 is slow
        parent, child = multiprocessing.Pipe()
        threads.append(threading.Thread(target=worker, args=(rank, child, delay), daemon=True))
        threads[-1].start()
        pool.pipes.append(parent)
    assert pool.run("sample", list(range(16)), {}) == [2 * x for x in range(16)]
    assert served[0] + served[1] == 8 and served[1] > served[0]  # 8 chunks of 2; the fast copy took most
    for pipe in pool.pipes:
        pipe.send(None)
