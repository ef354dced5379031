"""Question/answer records from the builtin task, a local JSONL/Parquet file, or a dataset id.

All sources go through `datasets` (except the builtin generator) and come out as
{"id", "question", "answer", "solution"}, the answer reduced to its final form.
"""

from __future__ import annotations

from pathlib import Path

from selfimprove.tasks.answers import extract_final
from selfimprove.core.errors import UserError
from selfimprove.core.stage import Setting
from selfimprove.tasks import SPLITS

# The loop file's `data:` section. prompts and eval name a builtin task's split, a file or a dataset id.
SETTINGS = {
    "prompts": Setting(str, None, "training prompts: builtin:arith/train, a .jsonl/.parquet file, or a dataset id"),
    "eval": Setting(str, None, "held-out evaluation prompts, labelled: builtin:arith/test, a file or a dataset id"),
    "question_field": Setting(str, "question", "the field holding the question"),
    "answer_field": Setting(str, "answer", "the field holding the gold answer (GSM8K: steps then #### N)"),
    "prompts_size": Setting(int, 512, "how many training prompts per iteration (the first N)"),
    "eval_size": Setting(int, 1000, "how many evaluation prompts (the first N)"),
    "seed": Setting(int, 0, "seed of the builtin task generator"),
    "digits": Setting(int, 3, "operand size of the builtin arithmetic task (match bootstrap.digits)"),
    "bad_fraction": Setting(float, 0.3, "builtin:noisy-arith: the share of bad prompts (malformed, ambiguous, "
                            "unanswerable)", check=lambda v: 0 <= v <= 1, fix="is a share; use a value in [0, 1]",
                            omit_default=True),
    "dataset_config": Setting(str, None, "config name for a hub dataset id (e.g. main for openai/gsm8k)"),
    "prompt_template": Setting(str, "{question}", "how a question becomes a prompt; {question} is replaced"),
}


def builtin_split(spec: str) -> tuple[str, str]:
    """(task, split) of builtin:<task>/<split>, checked against the registry."""
    from selfimprove.core.registry import UnknownName, entry

    task, _, split = spec.removeprefix("builtin:").partition("/")
    try:
        entry("builtin task", task)
    except UnknownName as error:
        raise UserError(f"data: {spec}: {error}") from None
    if split not in SPLITS:
        raise UserError(f"data: {spec}: unknown split {split!r}; use builtin:{task}/train, /validation or /test")
    return task, split


def task_plugins(spec: str) -> list[tuple[str, str]]:
    """The registry entry whose code makes a builtin split's rows (none for files and datasets)."""
    return [("builtin task", builtin_split(spec)[0])] if spec.startswith("builtin:") else []


def task_metrics(spec: str):
    """The builtin task's own evaluation (the DivPO miniature's validity and diversity), or None."""
    if not spec.startswith("builtin:"):
        return None
    from selfimprove.core.registry import resolve

    return resolve("builtin task", builtin_split(spec)[0]).metrics


def load_records(spec: str, data: dict, size: int, need_answers: bool = True) -> list[dict]:
    """The first `size` records of a source, with stable ids. Training prompts may come without answers
    (need_answers=False): ScPO never reads them; they only feed the pairs' chosen_correct statistic.
    Fields a builtin task adds (the RIP miniature's `bad`) are kept."""
    if spec.startswith("builtin:"):
        from selfimprove.core.registry import resolve

        task, split = builtin_split(spec)
        rows = resolve("builtin task", task).rows(data["seed"], size, split, data)
    else:
        rows = _load_with_datasets(spec, data, size, need_answers)
    return [{**row, "id": i, "question": row["question"], "answer": row["answer"], "solution": row.get("solution")}
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


def prompt_fields(record: dict) -> dict:
    """What a data source knows of a prompt beyond question and answer (the RIP miniature's `bad`),
    carried to the samples, scores and pairs as prompt_<field> for their statistics."""
    return {f"prompt_{key}": value for key, value in record.items() if key not in STANDARD_FIELDS}


STANDARD_FIELDS = ("id", "question", "answer", "solution")
