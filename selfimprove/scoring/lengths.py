"""Length instructions (LIFT, Yuan et al. 2024): counting words and putting a word limit into a prompt.

Words are counted as LIFT counts them, NLTK-style word tokens without punctuation: runs of letters and
digits (with inner apostrophes, "don't" is one word). NLTK's own tokenizer needs its punkt data from a
hub, so this regular expression stands in for it; on punctuation-separated text the two agree.
"""

from __future__ import annotations

import re

from selfimprove.tasks.answers import extract_final, same_answer

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
PAPER_TEMPLATE = "Answer the following instruction using {max_len} words or less.\n\n{instruction}"


def word_count(text: str) -> int:
    return len(WORD.findall(text))


def unwrap(prompt: str, prompt_template: str) -> str | None:
    """The question inside a prompt rendered with prompt_template ({question} once), or None when the
    prompt does not have the template's text around it."""
    before, _, after = prompt_template.partition("{question}")
    if not prompt.startswith(before) or not prompt.endswith(after) or len(prompt) < len(before) + len(after):
        return None
    return prompt[len(before):len(prompt) - len(after)]


def instructed(prompt: str, limit: int, template: str, prompt_template: str = "{question}") -> str:
    """The prompt with a word limit: the instruction inside the prompt template is replaced by the
    length template around it (a chat-format prompt stays in its chat format)."""
    question = unwrap(prompt, prompt_template)
    if question is None:
        question, prompt_template = prompt, "{question}"
    return prompt_template.replace("{question}", template.format(max_len=limit, instruction=question))


def length_instructed(backend, settings: dict, records: list[dict], template: str, on_batch=None) -> dict:
    """LIFT's evaluation: greedy outputs with a word limit in the prompt, the limit hard (an output over it
    fails): how often it is broken, and accuracy counting a broken limit as wrong."""
    limit = settings["length_limit"]
    length_template = settings["length_template"]
    prompts = [instructed(template.format(question=r["question"]), limit, length_template, template)
               for r in records]
    outputs = [texts[0] for texts in backend.sample(prompts, 1, 0.0, 1.0, settings["max_new_tokens"],
                                                    settings["batch_size"], settings["seed"], on_batch=on_batch)]
    within = [word_count(o) <= limit for o in outputs]
    labelled = all(r["answer"] is not None for r in records)
    figures = {"li_limit": limit, "li_violation_rate": 1 - sum(within) / len(outputs) if outputs else 0.0,
               "li_mean_words": sum(map(word_count, outputs)) / len(outputs) if outputs else 0.0}
    if labelled:
        correct = sum(ok and same_answer(extract_final(o), r["answer"]) for ok, o, r in zip(within, outputs, records))
        figures.update(li_correct=correct, li_accuracy=correct / len(outputs) if outputs else 0.0)
    return figures
