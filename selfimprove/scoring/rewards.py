"""Rewards: one score per sampled response, from a built-in rule, a user's Python function, or a reward
model (a sequence classifier whose first logit is the score). Used by the reward stage.

A rule is called as rule(question, response, gold) -> float | None; None means no score (counted as
missing, never turned into a zero). A rule marked `per_prompt = True` is called once per prompt with all
of its responses, rule(question, responses, gold) -> one score per response, for rewards that depend on
what the other samples said (the Adaptive Decoding miniature's "an answer no other sample gave"). reward.source names it: a rule of selfimprove.core.registry.REWARD_RULES,
or `module:function`.
"""

from __future__ import annotations

import importlib
import json
import math
from functools import partial
from pathlib import Path
from typing import Callable

from selfimprove.tasks.answers import extract_final, same_answer
from selfimprove.core.errors import UserError, exception_text, from_hub, quoted
from selfimprove.core.registry import REWARD_RULES, resolve, suggestion

Rule = Callable[[str, str, object], "float | None"]


def correct(question: str, response: str, gold, settings: dict) -> float:
    """1.0 when the response's final answer is the gold answer, else 0.0 (no answer at all is wrong)."""
    if gold is None:
        raise UserError(f"reward.source correct: the prompt {question[:80]!r} has no gold answer, and the rule needs "
                        "labelled prompts; give data with answers, or use reward.source: model or a module:function")
    return 1.0 if same_answer(extract_final(response), gold) else 0.0


def json_keys(question: str, response: str, gold, settings: dict) -> float:
    """1.0 when the response is a JSON object holding every key of reward.keys, else 0.0."""
    try:
        found = json.loads(response)
    except ValueError:
        return 0.0
    return 1.0 if isinstance(found, dict) and all(key in found for key in wanted_keys(settings)) else 0.0


def wanted_keys(settings: dict) -> list[str]:
    return [key.strip() for key in settings["keys"].split(",") if key.strip()]


SOURCES = (*REWARD_RULES, "model")  # besides module:function


def unknown_source(source: str) -> str | None:
    """What is wrong with reward.source, or None: a rule name, `model`, or `module:function`."""
    if source in SOURCES:
        return None
    if ":" in source:
        module, _, function = source.partition(":")
        if module and function.isidentifier() and all(part.isidentifier() for part in module.split(".")):
            return None
        return f"{source!r} is not module:function (e.g. mypkg.scoring:score)"
    return f"unknown reward source {source!r}; {suggestion(source, SOURCES)} (or a Python function as module:function)"


def rule(settings: dict) -> Rule:
    """The rule reward.source names, as rule(question, response, gold) -> float | None."""
    source = settings["source"]
    if source in REWARD_RULES:
        return partial(resolve("reward rule", source), settings=settings)
    problem = unknown_source(source)
    if problem or source == "model":
        raise UserError(f"reward.source: {problem or 'model is not a rule'}")
    return checked(user_function(source), source)


def user_function(source: str) -> Callable:
    """Import `module:function`; a missing module or attribute is one line naming the setting and the fix."""
    module_name, _, name = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as error:
        raise UserError(f"reward.source {source}: cannot import {module_name!r} ({type(error).__name__}: {error}); "
                        "put the module in the project (run from its root) or pip install it") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"reward.source {source}: {module_name} has no function {name!r}; define "
                        f"def {name}(question: str, response: str, gold) -> float | None there")
    return function


class RewardFailed(UserError):
    """A user's reward function that raised, or gave what is not a score, on one sample: one line naming
    the function and the sample (the traceback of what it raised goes to the stage's log). rule_scores
    adds where the sample is."""

    def __init__(self, source: str, problem: str, question: str, fix: str, where: str = ""):
        self.source, self.problem, self.question, self.fix = source, problem, question, fix
        at = f" ({where})" if where else ""
        super().__init__(f"reward {source} {problem} on the sample {quoted(question)}{at}; {fix}")

    def at(self, where: str) -> "RewardFailed":
        return RewardFailed(self.source, self.problem, self.question, self.fix, where)


FIX_RAISED = "fix the function (it may return None for no score); its traceback is in the log"


def checked(function: Callable, source: str) -> Rule:
    """The user's function, refusing what is not a finite number or None (a bool, a string, NaN); what it
    raises is named with the function and the sample."""

    def call(question: str, given, gold):
        try:
            return function(question, given, gold)
        except Exception as error:  # noqa: BLE001 - the user's code: any exception is named, not a crash
            raise RewardFailed(source, f"raised {exception_text(error)}", question, FIX_RAISED) from error

    def one(value, question: str, response: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RewardFailed(source, f"returned {value!r} for the response {quoted(response, 80)}", question,
                               "return a finite float, or None for no score")
        return float(value)

    def score(question: str, response: str, gold) -> float | None:
        return one(call(question, response, gold), question, response)

    def score_prompt(question: str, responses: list[str], gold) -> list[float | None]:
        values = call(question, responses, gold)
        if not isinstance(values, (list, tuple)) or len(values) != len(responses):
            raise RewardFailed(source, f"is per_prompt and returned {repr(values)[:80]} for {len(responses)} "
                               "responses", question, "return a list with one score (or None) per response")
        return [one(v, question, r) for v, r in zip(values, responses)]

    if getattr(function, "per_prompt", False):
        score_prompt.per_prompt = True
        return score_prompt
    return score


def per_prompt(rule: Rule) -> bool:
    """Whether a rule scores a prompt's responses together (a partial keeps its function's mark)."""
    return bool(getattr(getattr(rule, "func", rule), "per_prompt", False))


def rule_scores(rule: Rule, items: list[tuple[object, str, str, object]]) -> list:
    """A score per (prompt id, question, response, gold), in order; a per-prompt rule sees each prompt's
    responses together (those of one id, in their order). A user's function that fails says where its
    sample is: "response j of prompt i", i the prompt's id, j the response's place among those of the
    prompt scored here, from 0 (samples.jsonl's `sample` where every response is scored)."""
    if not per_prompt(rule):
        counted: dict = {}
        scores = []
        for prompt_id, question, response, gold in items:
            j = counted.get(prompt_id, 0)
            counted[prompt_id] = j + 1
            scores.append(_located(rule, (question, response, gold), f"response {j} of prompt {prompt_id}"))
        return scores
    groups: dict = {}
    for i, (prompt_id, *_rest) in enumerate(items):
        groups.setdefault(prompt_id, []).append(i)
    found: list = [None] * len(items)
    for prompt_id, members in groups.items():
        _, question, _, gold = items[members[0]]
        values = _located(rule, (question, [items[i][2] for i in members], gold), f"prompt {prompt_id}")
        for i, value in zip(members, values):
            found[i] = value
    return found


def _located(rule: Rule, arguments: tuple, where: str):
    """rule(*arguments), a user's function's failure saying where its sample is."""
    try:
        return rule(*arguments)
    except RewardFailed as failed:
        raise failed.at(where) from failed.__cause__


def callable_file(source: str) -> Path | None:
    """The project file behind `module:function` (so editing it re-runs the stage), without importing it;
    None for a rule, or a module that is not a file of the project (an installed package)."""
    if ":" not in source or package_module(source):
        return None
    base = Path(*source.partition(":")[0].split("."))
    return next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.is_file()), None)


def package_module(source: str) -> str | None:
    """The module of a `module:function` inside selfimprove (a builtin task's rule): code of the stage."""
    module = source.partition(":")[0]
    return module if ":" in source and (module == "selfimprove" or module.startswith("selfimprove.")) else None


def model_dir(value: str) -> Path | None:
    """reward.model as a file dependency: a local directory is one, a hub id is not (its revision is a param)."""
    return Path(value) if value and Path(value).is_dir() else None


def model_scores(settings: dict, questions: list[str], responses: list[str]) -> tuple[list[float], int]:
    """(the reward model's score of each question + response, how many texts were cut to fit the model).
    Texts are padded on the right, so that a model with absolute positions (BERT, GPT-2) scores a text
    the same alone or in a batch (rotary ones, Llama, are indifferent), and the classifier reads the last
    non-pad position, which it finds by config.pad_token_id (set here: many reward checkpoints lack it)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from selfimprove.models import load_tokenizer, revision_kwargs

    torch.manual_seed(settings["seed"])
    reference = settings["model"]
    if not reference:
        raise UserError("reward.source model needs a reward model; set reward.model to a directory or a hub id")
    revision = settings["revision"] or None
    cuda = torch.cuda.is_available()
    with from_hub(reference, "reward.model"):  # not cached and no network: one line naming the setting
        tokenizer = load_tokenizer(reference, revision)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            reference, dtype=torch.bfloat16 if cuda else torch.float32, output_loading_info=True,
            **revision_kwargs(reference, revision))
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"  # a cut keeps the response's end
    head = [key for key in info.get("missing_keys", []) if key.split(".")[0] in ("score", "classifier")]
    if head:
        raise UserError(f"reward.model {reference}: not a reward model, its classification head ({head[0]}) is not "
                        "in the checkpoint; name a sequence-classification checkpoint trained as a reward model")
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    config.pad_token_id = model.config.pad_token_id = tokenizer.pad_token_id  # where the classifier reads
    model = model.to("cuda" if cuda else "cpu").eval()
    texts, special = _texts(tokenizer, settings, questions, responses)
    limit = min(tokenizer.model_max_length, getattr(config, "max_position_embeddings", None) or 10 ** 9)
    scores, cut = [], 0
    for start in range(0, len(texts), settings["batch_size"]):
        chunk = texts[start:start + settings["batch_size"]]
        cut += sum(len(ids) > limit for ids in tokenizer(chunk, add_special_tokens=special)["input_ids"])
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=limit, add_special_tokens=special,
                          return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits
        scores.extend(logits[:, 0].float().tolist())
    return scores, cut


def _texts(tokenizer, settings: dict, questions: list[str], responses: list[str]) -> tuple[list[str], bool]:
    """(texts to score, whether the tokenizer adds its special tokens): question + response, or the
    exchange in the tokenizer's chat template (which writes its own)."""
    if not settings["chat_template"]:
        return [q + r for q, r in zip(questions, responses)], True
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"reward.chat_template: the tokenizer of {settings['model']} has no chat template; set "
                        "reward.chat_template: false (the model then scores question + response as raw text)")
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                                          tokenize=False) for q, r in zip(questions, responses)], False
