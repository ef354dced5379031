"""Question/answer records from the builtin task, a local JSONL/Parquet file, or a dataset id.

All sources go through `datasets` (except the builtin generator) and come out as
{"id", "question", "answer", "solution"}, the answer reduced to its final form.
"""

from __future__ import annotations

from pathlib import Path

from selfimprove import tinyarith
from selfimprove.answers import extract_final
from selfimprove.errors import UserError

BUILTIN_SPLITS = {"builtin:arith/train": "train", "builtin:arith/validation": "validation",
                  "builtin:arith/test": "test"}


def load_records(spec: str, data: dict, size: int, need_answers: bool = True) -> list[dict]:
    """The first `size` records of a source, with stable ids. Training prompts may come without answers
    (need_answers=False): ScPO never reads them; they only feed the pairs' chosen_correct statistic."""
    if spec.startswith("builtin:"):
        if spec not in BUILTIN_SPLITS:
            raise UserError(f"data: unknown builtin {spec!r}; available: {', '.join(BUILTIN_SPLITS)}")
        rows = tinyarith.problems(data["seed"], size, data.get("digits", 2), BUILTIN_SPLITS[spec])
    else:
        rows = _load_with_datasets(spec, data, size, need_answers)
    return [{"id": i, "question": row["question"], "answer": row["answer"], "solution": row.get("solution")}
            for i, row in enumerate(rows)]


def _load_with_datasets(spec: str, data: dict, size: int, need_answers: bool) -> list[dict]:
    from datasets import load_dataset

    qf, af = data["question_field"], data["answer_field"]
    suffix = Path(spec).suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet"):
        if not Path(spec).is_file():
            raise UserError(f"data: {spec}: no such file")
        dataset = load_dataset("parquet" if suffix == ".parquet" else "json", data_files=spec, split="train")
    else:  # a hub id, optionally ID:SPLIT (e.g. openai/gsm8k:test, with data.dataset_config: main)
        name, _, split = spec.partition(":")
        dataset = load_dataset(name, data.get("dataset_config"), split=split or "train")
    missing = [f for f in ((qf, af) if need_answers else (qf,)) if f not in dataset.column_names]
    if missing:
        raise UserError(f"data: {spec} has no field(s) {', '.join(missing)} (it has {', '.join(dataset.column_names)}); "
                        "set data.question_field / data.answer_field")
    dataset = dataset.select(range(min(size, len(dataset))))
    has_answers = af in dataset.column_names
    # The answer field may hold a whole solution (GSM8K: steps then "#### 72"): `answer` is its final
    # value, `solution` the text itself (IRPO adds it to the correct set).
    return [{"question": str(row[qf]),
             "answer": extract_final(str(row[af])) if has_answers and row[af] is not None else None,
             "solution": str(row[af]) if has_answers and row[af] is not None else None}
            for row in dataset]
