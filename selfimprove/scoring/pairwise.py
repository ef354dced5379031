"""Pairwise judging (Self-Taught Evaluator, Wang et al. 2024): a judge shown a question and two responses
names the better one with a verdict ([[A]] or [[B]] by default). Every pair is judged in both orders,
so a judge that favours a position is seen doing so (position consistency) and cannot be right by it.
Used by the perturb and pairjudge stages (synthetic pairs and their judgements), the judgement rules
(selfimprove.scoring.rules.judgements) and judge_eval (pairwise accuracy on a labelled pair set).

Templates come from selfimprove.core.templates: the paper's prompts are files of the package, the tiny
model's are written in code beside its task; a user's text file works wherever a name does.
"""

from __future__ import annotations

from collections import Counter

from selfimprove.scoring import judging
from selfimprove.core.stage import Setting, declaration

PAIRWISE_PLACEHOLDERS = ("question", "response_a", "response_b")
PERTURB_PLACEHOLDERS = ("question", "response")
VERDICT_PATTERN = r"\[\[(A|B)\]\]"


def wrap(template: str, prompt_template: str) -> str:
    """A template inside a chat format whose {question} is where the template's text goes."""
    return prompt_template.replace("{question}", template)


def view(text: str, marker: str) -> str | None:
    """What a judge is shown of a response: the text after the marker (all of it when the marker is
    empty), None when the marker is missing."""
    split = judging.split_response(text, marker)
    return split[1] if split else None


def both_orders(question: str, good: str, bad: str, template: str) -> list[dict]:
    """The two judge prompts of a pair and the verdict that is right in each (the good response first,
    then second)."""
    return [{"prompt": template.format(question=question, response_a=good, response_b=bad), "label": "A"},
            {"prompt": template.format(question=question, response_a=bad, response_b=good), "label": "B"}]


def majority(verdicts: list) -> str | None:
    """The verdict most samples give; None on a tie or when none parsed."""
    counts = Counter(v for v in verdicts if v is not None).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def consistent(first: str | None, second: str | None) -> bool | None:
    """Whether the verdicts of the two orders pick the same response (A then B, or B then A); None when
    either is missing."""
    if first is None or second is None:
        return None
    return first != second


def health(orders: list[dict], prefix: str) -> dict:
    """Figures over judged orders ({"label", "verdicts"} each, the two orders of a pair adjacent):
    parse failures, agreement of every verdict with the label, position consistency of the per-order
    majority verdicts, and how often the first position is named."""
    verdicts = [v for o in orders for v in o["verdicts"]]
    parsed = [v for v in verdicts if v is not None]
    agree = sum(v == o["label"] for o in orders for v in o["verdicts"])
    pairs = [(orders[i], orders[i + 1]) for i in range(0, len(orders) - 1, 2)]
    checks = [consistent(majority(a["verdicts"]), majority(b["verdicts"])) for a, b in pairs]
    checked = [c for c in checks if c is not None]
    return {f"{prefix}_pairs": len(pairs), f"{prefix}_judgements": len(verdicts),
            f"{prefix}_parse_failure_rate": 1 - len(parsed) / len(verdicts) if verdicts else 0.0,
            f"{prefix}_label_agreement": agree / len(verdicts) if verdicts else 0.0,
            f"{prefix}_position_consistency": sum(checked) / len(checked) if checked else 0.0,
            f"{prefix}_first_position_rate": parsed.count("A") / len(parsed) if parsed else 0.0}


@declaration
def judges_pairs(settings: dict) -> bool:
    """Whether a loop without `pipeline:` runs perturb and pairjudge: its pair rule reads pair judgements."""
    from selfimprove.scoring.rules import needs

    return needs(settings) == "judgements"


@declaration
def verdict_setting() -> Setting:
    return Setting(str, VERDICT_PATTERN, "where the verdict is in a judgement: a regular expression whose one group "
                   "captures A or B", check=judging.one_group,
                   fix="must be a regular expression with one group capturing A or B, e.g. '\\[\\[(A|B)\\]\\]'")
