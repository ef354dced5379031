"""Real-data inputs: local JSONL and Parquet in GSM8K's format, through `datasets`."""

import json

import pytest

from selfimprove.data import load_records
from selfimprove.errors import UserError

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
