"""LLM-as-a-judge building blocks: wrapping a template, splitting thought from response, score and verdict
parsing, judge health. Used by the judge stages, by evaluation and by tests (templates: selfimprove.core.templates).

A judgement that does not end in a parseable score is a parse failure and stays one: it is never turned
into a score, it is counted, and too many of them fail the stage (judge.max_failure_rate).
"""

from __future__ import annotations

import re
from collections import Counter

from selfimprove.core.errors import UserError
from selfimprove.core.stage import declaration

META_PLACEHOLDERS = [("question", "response", "judgement_a", "judgement_b"), ("question", "response", "score_a", "score_b")]


def wrap(template: str, judge_settings: dict) -> str:
    """A judge template inside judge.prompt_template (e.g. a chat format: an instruction model judges
    best in the format it was tuned on). Not data.prompt_template: TPO's holds the thought prompt."""
    return judge_settings["prompt_template"].replace("{question}", template)


def split_response(completion: str, marker: str) -> tuple[str, str] | None:
    """(thought, response) split at the last marker; the whole completion is the response when marker
    is empty. None when the marker is missing: the output cannot be split (TPO rejects those)."""
    if not marker:
        return "", completion.strip()
    if marker not in completion:
        return None
    thought, response = completion.rsplit(marker, 1)
    return thought.strip(), response.strip()


def parse_score(text: str, pattern: str, max_score: int) -> int | None:
    """The last score the judgement states, or None: no match, or a value outside 0..max_score."""
    matches = re.findall(pattern, text)
    if not matches:
        return None
    value = int(matches[-1])
    return value if 0 <= value <= max_score else None


def expected_score(probs: list[float], min_mass: float) -> float | None:
    """The probability-weighted score from the probabilities of the scores 0..len-1, renormalised over
    them; None (a failure, counted as one) when their total mass is below min_mass."""
    mass = sum(probs)
    if mass <= 0 or mass < min_mass:
        return None
    return sum(value * p for value, p in enumerate(probs)) / mass


def mean(values: list) -> float | None:
    """Mean of the parsed scores; None when every judgement failed (no score, not a zero)."""
    parsed = [v for v in values if v is not None]
    return sum(parsed) / len(parsed) if parsed else None


def health(records: list[dict], max_score: int) -> dict:
    """Judge health over a stage's records (one per prompt: scores per response, correctness when known):
    parse failures, ties, the score histogram, and agreement with the truth where gold answers exist."""
    scores = [s for r in records for per_response in r["scores"] for s in per_response]
    parsed = [s for s in scores if s is not None]
    histogram = Counter(round(s) for s in parsed)  # expected scores fall in their nearest bin
    judged_prompts = [r for r in records if sum(m is not None for m in r["mean_scores"]) >= 2]
    ties = sum(len({m for m in r["mean_scores"] if m is not None}) == 1 for r in judged_prompts)
    agree = checked = 0
    for record in records:
        for per_response, correct in zip(record["scores"], record.get("correct") or []):
            for score in per_response:
                if score is not None and correct is not None:
                    checked += 1
                    agree += says_right(score, max_score) == correct
    figures = {
        "judge_judgements": len(scores),
        "judge_parse_failures": len(scores) - len(parsed),
        "judge_parse_failure_rate": (len(scores) - len(parsed)) / len(scores) if scores else 0.0,
        "judge_tie_rate": ties / len(judged_prompts) if judged_prompts else 0.0,
        "judge_mean_score": sum(parsed) / len(parsed) if parsed else 0.0,
        "judge_unsplittable": sum(r["unsplittable"].count(True) for r in records),
        **{f"judge_score_{value}": histogram.get(value, 0) for value in range(max_score + 1)},
    }
    masses = [sum(p) for r in records for per_response in r.get("score_probs") or [] for p in per_response]
    if masses:  # mode expected: how much of the judge's next-token mass falls on score digits
        figures["judge_score_mass"] = sum(masses) / len(masses)
    if checked:
        figures["judge_sample_agreement"] = agree / checked  # on this iteration's samples, vs gold
    return figures


def says_right(score: float, max_score: int) -> bool:
    """A pointwise score read as a verdict: above the middle of the scale means 'right'."""
    return score > max_score / 2


def check_failure_rate(records: list[dict], figures: dict, limit: float, pattern: str) -> None:
    """Fail with what the judge actually wrote when too many judgements have no score."""
    rate = figures["judge_parse_failure_rate"]
    if rate <= limit:
        return
    if "judge_score_mass" in figures:
        raise UserError(f"judge: {rate:.0%} of {figures['judge_judgements']} expected scores put less than "
                        f"judge.min_score_mass of the next-token probability on the score digits (mean "
                        f"{figures['judge_score_mass']:.2f}; limit {limit:.0%}, judge.max_failure_rate). Check that "
                        "judge.prefill ends where the judge's score digit comes, or lower judge.min_score_mass")
    failed = next((text for r in records for texts, scores in zip(r["judgements"], r["scores"])
                   for text, score in zip(texts, scores) if score is None), "")
    raise UserError(f"judge: {rate:.0%} of {figures['judge_judgements']} judgements have no score matching "
                    f"{pattern!r} (limit {limit:.0%}, judge.max_failure_rate); the judge wrote e.g. {failed[-200:]!r}. "
                    "Fix the template, or raise judge.max_new_tokens if the judgements are cut short")


WINNER_PATTERN = r"(?i)Winner:\s*(A|B|tie)\b"  # a comparison's verdict line (the win rate's template)


def parse_verdict(text: str, pattern: str, ties: bool = False) -> str | None:
    """'A' or 'B' from the last verdict a comparison states ('tie' too where ties count); None for a
    refusal or no verdict, which callers count as a parse failure. pattern: one group capturing the verdict."""
    found = [m.upper() for m in re.findall(pattern, text)]
    if not found:
        return None
    if found[-1] in ("A", "B"):
        return found[-1]
    return "tie" if ties and found[-1] == "TIE" else None


def position_weights(battles: list[dict]) -> tuple[float, float]:
    """Meta-Rewarding's correction for position bias: (w1, w2) = (wins in second place, wins in first
    place) / all wins, so that a win in the favoured position counts less."""
    first = sum(b["winner"] == "A" for b in battles)
    second = sum(b["winner"] == "B" for b in battles)
    if first + second == 0:
        return 0.5, 0.5
    return second / (first + second), first / (first + second)


def battle_scores(battles: list[dict], size: int, weights: tuple[float, float]) -> list[list[float]]:
    """B[m][n] = w1 * [m won shown first against n] + w2 * [m won shown second against n]; ties and
    unparsed verdicts count 0. Each battle is {"first": m, "second": n, "winner": "A" | "B" | None}."""
    w1, w2 = weights
    scores = [[0.0] * size for _ in range(size)]
    for battle in battles:
        if battle["winner"] == "A":
            scores[battle["first"]][battle["second"]] += w1
        elif battle["winner"] == "B":
            scores[battle["second"]][battle["first"]] += w2
    return scores


def elo(scores: list[list[float]], steps: int = 500, lr: float = 0.5, prior: float = 0.01) -> list[float]:
    """Bradley-Terry strengths by maximum likelihood: maximise sum B[m][n] log sigmoid(e_m - e_n), by
    gradient ascent. A small Gaussian prior keeps them finite when one side wins every battle."""
    import numpy as np

    wins = np.asarray(scores, dtype=float)
    strength = np.zeros(len(wins))
    for _ in range(steps):
        diff = strength[:, None] - strength[None, :]
        p_loss = 1.0 / (1.0 + np.exp(diff))  # sigmoid(e_n - e_m): how surprising each win of m over n is
        gradient = (wins * p_loss).sum(axis=1) - (wins.T * p_loss.T).sum(axis=1) - prior * strength
        strength += lr * gradient / max(1.0, wins.sum())
    return (strength - strength.mean()).tolist()


def carried(rows: list[dict]) -> dict:
    """What a scorer's record carries over from its prompt's samples: the prompt's own fields
    (prompt_<field>, from the data source) and, where generate recorded them, each sample's log p and
    the temperature(s) it was decoded with."""
    found = {key: value for key, value in rows[0].items() if key.startswith("prompt_")}
    if all("logprob" in row for row in rows):
        found["logprobs"] = [row["logprob"] for row in rows]
    if all("temperature" in row for row in rows):  # decoded with a temperature head (Adaptive Decoding)
        found["temperatures"] = [row["temperature"] for row in rows]
    return found


@declaration
def one_group(pattern: str) -> bool:
    import re

    try:
        return re.compile(pattern).groups == 1
    except re.error:
        return False
