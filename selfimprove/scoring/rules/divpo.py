"""DivPO's pair rule (Diverse Preference Optimization, Lanchantin et al. 2025, arXiv 2501.18101): among the
responses of about the best quality the most diverse is chosen, among those of about the worst the least
diverse is rejected; training is plain DPO on these pairs. In a loop file:

    pairs: {rule: divpo, rho: 0.2, diversity: word_frequency}

Per prompt, over the pool P of responses that have a mean score (a None score takes no part; with the
probability and judge criteria, neither does a response whose diversity value is None):
    r_max, r_min = the highest and lowest score in P   (fewer than 2 responses or r_max == r_min: no pair)
    chosen pool   Y_c = {y in P : r(y) >= r_max - rho * (r_max - r_min)}
    rejected pool Y_r = {y in P : r(y) <= r_min + rho * (r_max - r_min)}
    chosen = argmax of D over Y_c;  rejected = argmin of D over Y_r without chosen's text;  ties: rng
rho = 0 is best vs worst with diversity as the tie-break; at rho = 0.5 every response is in a pool ("every
response eligible") and the middle score in both; above it the pools overlap more, and the chosen
may score below the rejected (counted). When Y_r holds only chosen's text, that text stays the rejected
and the chosen is the next most diverse of Y_c with another text.

Diversity criteria D (setting `diversity`), higher = more diverse:
- probability: D(y) = -log pi(y|x), the sampling policy's summed log-probability of the completion
  (record["logprobs"], written by the generate stage with `logprobs: true`): the rarer, the more diverse.
- word_frequency: words(y) = re.findall(r"\\w+", y.lower()), runs of letters, digits and underscores
  (whitespace and punctuation separate words: " 58+79" -> ["58", "79"]); count(w) = the occurrences of
  w in all responses of P, repeats inside one response included;
      D(y) = (1 / |words(y)|) * sum over w in words(y), repeats included, of 1 / count(w)
  in (0, 1]: 1 when no word of y occurs anywhere else in the pool; 0 for a response without words.
- judge: record["diversity"], one float per completion, written by a diversity-judge stage (the
  paper's judge, an LLM, names the most and the least diverse response of the pool; no stage exists yet).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

from selfimprove.core.errors import UserError
from selfimprove.core.stage import Setting
from selfimprove.scoring.pairs import make_pair

SETTINGS = {"diversity": Setting(str, "word_frequency", "DivPO's diversity criterion: probability, "
                                 "word_frequency or judge", choices=("probability", "word_frequency", "judge"),
                                 omit_default=True)}

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def word_frequency_diversity(texts: list[str]) -> list[float]:
    """D of each text against the pool made of all of them (see the module docstring)."""
    split = [words(t) for t in texts]
    count = Counter(w for ws in split for w in ws)
    # fsum is exactly rounded, so equal multisets of 1/count give equal floats (exact ties for the rng).
    return [math.fsum(1 / count[w] for w in ws) / len(ws) if ws else 0.0 for ws in split]


def diversity_values(record: dict, pool: list[int], criterion: str) -> dict[int, float]:
    """D of each pool member that has one."""
    if criterion == "word_frequency":
        texts = [record["responses"][i] or "" for i in pool]
        return dict(zip(pool, word_frequency_diversity(texts)))
    if criterion == "probability":
        values = record.get("logprobs")
        if values is None:
            raise UserError(f"pairs.diversity: probability needs each sample's log-probability, and prompt "
                            f"{record['id']} has none; set generate.logprobs: true "
                            "(or pairs.diversity: word_frequency)")
        return {i: -values[i] for i in pool if values[i] is not None}
    if criterion == "judge":
        if "diversity" not in record:
            raise UserError(f"pairs.diversity: judge needs the diversity judge's values, and prompt {record['id']} "
                            "has none; put the diversity stage before pairs, or set pairs.diversity: word_frequency")
        values = record["diversity"]  # None: the judge's verdict could not be read, no pair
        return {i: float(values[i]) for i in pool if values[i] is not None} if values is not None else {}
    raise UserError(f"pairs.diversity: {criterion!r} is not a criterion; use probability, word_frequency or judge")


def _argbest(indices: list[int], values: dict[int, float], pick, rng: random.Random) -> int | None:
    if not indices:
        return None
    best = pick(values[i] for i in indices)
    return rng.choice([i for i in indices if values[i] == best])


def divpo_choice(record: dict, rho: float, criterion: str, rng: random.Random) -> tuple[int, int, dict] | None:
    """(chosen index, rejected index, D by index) for one prompt, or None when it has no spread."""
    means = record["mean_scores"]
    scored = [i for i, m in enumerate(means) if m is not None]
    diversity = diversity_values(record, scored, criterion)
    pool = [i for i in scored if i in diversity]
    if len(pool) < 2 or len({means[i] for i in pool}) == 1:
        return None
    high, low = max(means[i] for i in pool), min(means[i] for i in pool)
    top = [i for i in pool if means[i] >= high - rho * (high - low)]
    bottom = [i for i in pool if means[i] <= low + rho * (high - low)]
    texts = record["completions"]
    chosen = _argbest(top, diversity, max, rng)
    rejected = _argbest([i for i in bottom if texts[i] != texts[chosen]], diversity, min, rng)
    if rejected is None:  # the rejected pool is chosen's text only: keep it there, take the next chosen
        rejected = _argbest(bottom, diversity, min, rng)
        chosen = _argbest([i for i in top if texts[i] != texts[rejected]], diversity, max, rng)
    return None if chosen is None else (chosen, rejected, diversity)


def divpo(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    rho, criterion = settings["rho"], settings["diversity"]
    pairs, dropped = [], 0
    for record in records:
        choice = divpo_choice(record, rho, criterion, rng)
        if choice is None:
            dropped += 1
            continue
        chosen, rejected, diversity = choice
        correct = record.get("correct") or [None] * len(record["completions"])
        pairs.append(make_pair(record["prompt"], record["completions"][chosen], record["completions"][rejected],
                               id=record["id"], source="divpo", rejected_from_extra=False,
                               chosen_score=record["mean_scores"][chosen],
                               rejected_score=record["mean_scores"][rejected],
                               chosen_diversity=diversity[chosen], rejected_diversity=diversity[rejected],
                               chosen_correct=correct[chosen], rejected_correct=correct[rejected]))  # None without gold

    def mean(key: str) -> float:
        return sum(p[key] for p in pairs) / len(pairs) if pairs else 0.0

    stats = {"prompts": len(records), "pairs": len(pairs),
             # no spread: fewer than 2 usable responses, all scores equal, or (rare) no two distinct texts
             "dropped_no_spread": dropped,
             "mean_chosen_diversity": mean("chosen_diversity"), "mean_rejected_diversity": mean("rejected_diversity"),
             "mean_chosen_score": mean("chosen_score"), "mean_rejected_score": mean("rejected_score"),
             # Above rho = 0.5 the pools overlap: how often the more diverse response scores lower.
             "chosen_below_rejected": sum(p["chosen_score"] < p["rejected_score"] for p in pairs)}
    return pairs, stats


divpo.needs = "scores"
divpo.settings = SETTINGS
