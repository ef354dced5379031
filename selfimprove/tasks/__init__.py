"""Builtin tasks: synthetic data made in the project, for the builtin models and the miniatures.

A task (registered in selfimprove.core.registry.BUILTIN_TASKS as "module:TASK") is a `Task`:
- chars: the character vocabulary of its prompts and completions (the builtin model's tokenizer);
- rows(seed, size, split, data) -> [{"question", "answer", "solution"}]: the prompts of
  `data.prompts: builtin:<task>/<split>` (split: train, validation or test; disjoint), answer None
  where the task has no single gold answer;
- bootstrap_examples(seed, count, settings) -> [(prompt, completion)]: what a builtin model built on
  the task is trained on (settings: the bootstrap section);
- metrics(records, samples) -> figures, optional: the task's own evaluation of evaluate.k samples per
  prompt (DivPO's miniature: validity and diversity), for tasks without one gold answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Task:
    name: str
    chars: list[str]
    rows: Callable[[int, int, str, dict], list[dict]]
    bootstrap_examples: Callable[[int, int, dict], list[tuple[str, str]]]
    metrics: Callable[[list[dict], list[list[str]]], dict] | None = None
