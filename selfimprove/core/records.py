"""An iteration's records joined by prompt: each prompt with its samples, what the scorers said of each
sample, and the pairs made from them. The run's HTML report (selfimprove.stages.report) browses this;
a terminal view of the same records can use it too (it sits in core, below both).

    prompts = join([read_jsonl(p) for p in ("it1/samples.jsonl", "it1/votes.jsonl", "it1/pairs.jsonl")])
    prompts[0] == {"id": 0, "question": "156+953=", "gold": "1109", "fields": {"majority": "1079", ...},
                   "samples": [{"completion": " #### 1059", "answers": "1059", ...}, ...],
                   "pairs": [{"chosen": ..., "rejected": ..., "weight": 0.375, ...}]}

Records are told apart by their shape, never by the stage that wrote them, so a new stage's records join
without a line here:
- a sample row has a `completion` (generate, system2: one row per sample, in sample order);
- a scorer's row has `completions`, one prompt's, and lists aligned with them (vote's answers, a judge's
  or a reward's scores, diversity); a list as long as the completions is per sample, anything else is
  about the prompt (the majority, the vote counts);
- a pair has a `chosen` (pairs, filter, lift, bsm; an SFT example has no `rejected`);
- any other record with an id (a synthesized prompt, a judgement) adds its fields to its prompt.
The key is the record's `id` (the prompt's index in the iteration's prompt set), or its prompt text when
it has none (pairs read from a user's file).
"""

from __future__ import annotations

from typing import Iterable

# What a prompt is, not something said about it: kept once per prompt, never repeated per sample.
PROMPT_FIELDS = ("id", "prompt", "question", "gold", "solution", "answer")


def kind(record: dict) -> str:
    if "completion" in record:
        return "sample"
    if isinstance(record.get("completions"), list):
        return "scored"
    if "chosen" in record:
        return "pair"
    return "other"


def join(files: Iterable[list[dict]]) -> list[dict]:
    """The prompts of an iteration's record files (each a list of records), in id order. Samples are
    joined first, so that a scorer's per-sample lists land on the samples they are about, whatever order
    the files come in."""
    by_kind: dict[str, list[dict]] = {"sample": [], "scored": [], "pair": [], "other": []}
    for records in files:
        for record in records:
            by_kind[kind(record)].append(record)
    prompts: dict = {}
    for record in by_kind["sample"]:
        _entry(prompts, record)["samples"].append(_without(record, PROMPT_FIELDS))
    for record in by_kind["scored"]:
        _scored(_entry(prompts, record), record)
    for record in by_kind["pair"]:
        _entry(prompts, record)["pairs"].append(_without(record, PROMPT_FIELDS))
    for record in by_kind["other"]:
        _entry(prompts, record)["fields"].update(_without(record, PROMPT_FIELDS))
    return [prompts[key] for key in sorted(prompts, key=_order)]


def counts(prompts: list[dict]) -> dict:
    """{prompts, samples, pairs} of joined prompts."""
    return {"prompts": len(prompts), "samples": sum(len(p["samples"]) for p in prompts),
            "pairs": sum(len(p["pairs"]) for p in prompts)}


def _order(key) -> tuple:
    """Ids in numeric order, then prompts keyed by their text."""
    return (0, key, "") if isinstance(key, (int, float)) else (1, 0, str(key))


def _entry(prompts: dict, record: dict) -> dict:
    key = record.get("id")
    if key is None or isinstance(key, (list, dict)):
        key = str(record.get("prompt") or record.get("question") or "")
    found = prompts.get(key)
    if found is None:
        found = prompts[key] = {"id": key, "question": None, "gold": None, "fields": {}, "samples": [], "pairs": []}
    # The question before the prompt: a prompt may be the question inside a template.
    for name in ("question", "prompt"):
        if found["question"] is None and isinstance(record.get(name), str):
            found["question"] = record[name]
    for name in ("gold", "answer"):
        if found["gold"] is None and record.get(name) is not None:
            found["gold"] = record[name]
    return found


def _scored(entry: dict, record: dict) -> None:
    """A scorer's row: its lists as long as the completions go on the samples, one item each; the rest
    describes the prompt. Without sample rows (a scorer's file alone) its completions are the samples."""
    completions = record["completions"]
    if not entry["samples"]:
        entry["samples"] = [{"completion": completion} for completion in completions]
    aligned = len(entry["samples"]) == len(completions)
    for name, value in _without(record, PROMPT_FIELDS + ("completions",)).items():
        if aligned and isinstance(value, list) and len(value) == len(completions):
            for sample, item in zip(entry["samples"], value):
                sample[name] = item
        else:
            entry["fields"][name] = value


def _without(record: dict, names: tuple[str, ...]) -> dict:
    return {key: value for key, value in record.items() if key not in names}
