"""Reward-hacking and drift alarms: figures of an iteration's scored samples and of the pairs built from
them that show a loop learning something other than the task. Self-Rewarding's judges come to prefer
longer answers (the length growth TPO and Meta-Rewarding add length control against); a vote or a reward
can favour a length as well; a policy can collapse onto one answer it repeats.

    figures = alarm_figures(scored_records, pairs)

- alarm_length_gap: mean characters of chosen minus rejected, over the preference pairs.
- alarm_chosen_longer: share of preference pairs whose chosen response is the longer.
- alarm_score_length_corr: Pearson correlation of a sample's score (vote share, judge score or reward)
  with its length, both centred within their prompt (so that hard prompts with long answers do not
  count as a length preference), over the prompts whose samples' scores differ; left out where none do.
- alarm_sample_length: mean characters of the sampled responses.
- alarm_repeat_rate: share of samples identical to another sample of the same prompt.

Lengths are of the response a scorer saw (`responses`: the text after a thought marker, TPO) where the
records have it, else of the whole completion.
"""

from __future__ import annotations

import math


def alarm_figures(records: list[dict], pairs: list[dict]) -> dict:
    """The alarm figures of an iteration (those defined for its records and pairs)."""
    figures = {}
    preference = [p for p in pairs if isinstance(p.get("chosen"), str) and isinstance(p.get("rejected"), str)]
    if preference:
        gaps = [len(p["chosen"]) - len(p["rejected"]) for p in preference]
        figures["alarm_length_gap"] = sum(gaps) / len(gaps)
        figures["alarm_chosen_longer"] = sum(gap > 0 for gap in gaps) / len(gaps)
    texts = [responses(record) for record in records]
    lengths = [len(text) for group in texts for text in group]
    if lengths:
        figures["alarm_sample_length"] = sum(lengths) / len(lengths)
        figures["alarm_repeat_rate"] = sum(repeats(group) for group in texts) / len(lengths)
    correlation = score_length_correlation(records)
    if correlation is not None:
        figures["alarm_score_length_corr"] = correlation
    return figures


def responses(record: dict) -> list[str]:
    """A prompt's sampled responses, as its scorer read them."""
    completions = record.get("completions") or []
    seen = record.get("responses") or [None] * len(completions)
    return [r if isinstance(r, str) else (c or "") for r, c in zip(seen, completions)]


def repeats(texts: list[str]) -> int:
    """Samples identical (up to surrounding space) to another sample of the same prompt."""
    counts: dict[str, int] = {}
    for text in texts:
        counts[text.strip()] = counts.get(text.strip(), 0) + 1
    return sum(count for count in counts.values() if count > 1)


def sample_scores(record: dict) -> list[float | None]:
    """Each sample's score: its judge's or reward's mean score, or the vote share of its answer."""
    if "mean_scores" in record:
        return list(record["mean_scores"])
    if "votes" in record and "answers" in record and record.get("n"):
        return [record["votes"].get(a, 0) / record["n"] if a is not None else 0.0 for a in record["answers"]]
    return []


def score_length_correlation(records: list[dict]) -> float | None:
    """Pearson r of within-prompt centred scores and lengths, pooled over prompts; None if undefined."""
    xs, ys = [], []
    for record in records:
        pairs = [(s, len(t)) for s, t in zip(sample_scores(record), responses(record)) if s is not None]
        if len({s for s, _ in pairs}) < 2:
            continue  # equal scores say nothing of a preference; their lengths would only dilute r
        mean_score = sum(s for s, _ in pairs) / len(pairs)
        mean_length = sum(n for _, n in pairs) / len(pairs)
        xs += [s - mean_score for s, _ in pairs]
        ys += [n - mean_length for _, n in pairs]
    spread = math.sqrt(sum(x * x for x in xs) * sum(y * y for y in ys))
    return sum(x * y for x, y in zip(xs, ys)) / spread if spread else None
