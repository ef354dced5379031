"""Length instructions (LIFT, Yuan et al. 2024): counting words and putting a word limit into a prompt.

Words are counted as LIFT counts them, NLTK-style word tokens without punctuation: runs of letters and
digits (with inner apostrophes, "don't" is one word). NLTK's own tokenizer needs its punkt data from a
hub, so this regular expression stands in for it; on punctuation-separated text the two agree.
"""

from __future__ import annotations

import re

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
