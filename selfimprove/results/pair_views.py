"""The pairs a prompt produced, and why it produced none, for `selfimprove show` (views of the "pairs" and
"judge_pairs" artifacts; see selfimprove.results.views).

Several stages of an iteration may write pairs (pairs, then filter, then lift; metajudge's judge pairs,
which the pairs stage adds to its own): each file is folded in, a pair found again is the same pair, and
the last writer's file is what train read. A pair an earlier writer made and a later one left out says
which stage dropped it. A prompt without a pair gets its reason from its pair rule itself: the rule is run
on that prompt's records alone and the drop figure it returns (dropped_below_tau, dropped_ties, ...) is
the reason, worded by the figure's declaration (selfimprove.core.stage.Metric), with the numbers where a
reason has them here (_detail).
"""

from __future__ import annotations

import random

from selfimprove.core import registry
from selfimprove.results.views import Iteration, Source, number

# The provenance a pair record may carry (selfimprove.scoring.pairs.Pair) that is not its texts.
TEXTS = ("id", "prompt", "completion", "chosen", "rejected", "weight")


def pairs(it: Iteration, records: list[dict], source: Source) -> list[tuple[dict, dict]]:
    """Fold a pairs file in; return the (item, pair) entries the previous writer had and this one left out."""
    if source.stage not in it.pair_writers:
        it.pair_writers.append(source.stage)
    if _finish not in it.finishers:
        it.finishers.append(_finish)
    for record in records:
        item = it.item(record, fill=not it.items.get(str(record["id"])))
        key = (record.get("prompt"), record.get("chosen"), record.get("rejected"))
        entry = next((e for e in item["pairs"] if (e["prompt"], e["chosen"], e["rejected"]) == key), None)
        if entry is None:
            voted = it.records.get("votes", {}).get(str(record["id"]))
            entry = _entry(item, record, source.stage, voted[0]["n"] if voted else None)
            item["pairs"].append(entry)
        if source.stage not in entry["in"]:
            entry["in"].append(source.stage)
    before = it.pair_writers[-2] if len(it.pair_writers) > 1 else None
    return [(item, entry) for item in it.items.values() for entry in item["pairs"]
            if before in entry["in"] and source.stage not in entry["in"]]


def rule_pairs(it: Iteration, records: list[dict], source: Source) -> None:
    """The pairs stage's pairs, and for each prompt its rule made none of, why (the rule's own drop figure)."""
    pairs(it, records, source)
    settings = it.settings.get(source.stage, {})
    try:
        rule = registry.resolve("pair rule", settings.get("rule", ""))
    except registry.UnknownName:
        return
    made = {str(item["id"]) for item in it.items.values() for entry in item["pairs"] if entry["by"] == source.stage}
    for key, scored in it.records.get(rule.needs, {}).items():
        if key not in made:
            it.items[key]["no_pair"] = {"by": source.stage, **why_none(rule, scored, settings, source)}


def filtered_pairs(it: Iteration, records: list[dict], source: Source) -> None:
    """RIP's filter: which of its three rules each dropped pair fails, against the iteration's thresholds."""
    from selfimprove.stages import filter as rip

    settings = it.settings.get(source.stage, {})
    strict = settings.get("strict", True)
    for _, entry in pairs(it, records, source):
        values = rip.metrics(entry["fields"])
        failed = []
        for metric, key, side in rip.RULES:
            limit = source.stats.get(f"filter_threshold_{metric}")
            if limit is not None and not rip.keep_rule(values[metric], limit, side, strict):
                fails = (f"not {side}" if strict else {"above": "below", "below": "above"}[side])
                failed.append(f"{metric.replace('_', ' ')} {number(values[metric])} is {fails} its "
                              f"p{number(settings.get(key))} = {number(limit)} ({source.stage}.{key})")
        entry["dropped"], entry["dropped_by"] = f"{source.stage}: " + ("; ".join(failed) or "dropped"), source.stage


def lifted_pairs(it: Iteration, records: list[dict], source: Source) -> None:
    """LIFT's length-instructed pairs, and for a pair it made none of, that its lengths were too close."""
    from selfimprove.scoring.lengths import word_count

    pairs(it, records, source)
    gap = it.settings.get(source.stage, {}).get("min_gap")
    lifted = {str(r["id"]) for r in records if r.get("length_limit") is not None}
    for key, item in it.items.items():
        for entry in item["pairs"]:
            if key in lifted or entry["by"] == source.stage or entry["rejected"] is None or gap is None:
                continue
            words = word_count(entry["chosen"]), word_count(entry["rejected"])
            if abs(words[0] - words[1]) < gap:
                entry["why"].append(f"{source.stage} made no length-instructed pair of it: {words[0]} vs "
                                    f"{words[1]} words, under {source.stage}.min_gap = {gap}")


def why_none(rule, scored: list[dict], settings: dict, source: Source) -> dict:
    """{reason, detail} for a prompt the rule made no pair of: its own drop figure on the prompt alone."""
    try:
        made, stats = rule(scored, settings, random.Random(0))
    except Exception:  # noqa: BLE001 - a rule that cannot run on one prompt (it raised in the run as well)
        made, stats = [], {}
    dropped = [key for key, value in stats.items() if key.startswith("dropped_") and value]
    if dropped:
        key = dropped[0]
        try:
            detail = _detail(key, scored[0], settings) or _declared(key)
        except (KeyError, ValueError, TypeError):  # a record without the numbers: the figure's own words
            detail = _declared(key)
        return {"reason": key.removeprefix("dropped_").replace("_", " "), "detail": detail}
    if made:  # a pair of its own, left out by a choice over the whole iteration (balancing verdicts)
        whole = ", ".join(f"{key} {value}" for key, value in source.stats.items()
                          if key.startswith("dropped_") and value)
        return {"reason": "left out", "detail": f"the rule makes a pair of it alone; over the iteration it was "
                                                f"left out ({whole or 'pairs.json says no more'})"}
    return _shape_reason(scored[0], settings)


def _declared(key: str) -> str:
    declared = registry.metric(key)
    return declared.help if declared and declared.help else f"the pair rule's {key}"


def _below_tau(record: dict, settings: dict) -> str:
    if record["majority"] is None:
        return "no sample has an answer to read"
    tau = settings["min_votes"] * record["n"]
    return (f"its top answer {record['majority']} has {record['majority_votes']} of {record['n']} votes, under "
            f"tau = {number(settings['min_votes'])} x {record['n']} = {number(tau)} (pairs.min_votes)")


def _ties(record: dict, settings: dict) -> str:
    means = {m for m in record["mean_scores"] if m is not None}
    return f"every response scores {number(means.pop())}" if len(means) == 1 else _declared("dropped_ties")


def _small_margin(record: dict, settings: dict) -> str:
    means = [m for m in record["mean_scores"] if m is not None]
    return (f"best {number(max(means))} vs worst {number(min(means))}: a gap under pairs.min_margin = "
            f"{number(settings['min_margin'])}")


def _below_min_score(record: dict, settings: dict) -> str:
    means = [m for m in record["mean_scores"] if m is not None]
    return f"its best score {number(max(means))} is under pairs.min_score = {number(settings['min_score'])}"


def _detail(key: str, record: dict, settings: dict) -> str | None:
    """The numbers behind a drop reason the shipped rules count, for one prompt; None for any other reason
    (a new rule's), which its metric's declared help then explains."""
    explain = {"dropped_below_tau": _below_tau, "dropped_ties": _ties, "dropped_small_margin": _small_margin,
               "dropped_below_min_score": _below_min_score}.get(key)
    return explain(record, settings) if explain else None


def _shape_reason(record: dict, settings: dict) -> dict:
    """Why a rule made nothing where it counts no drop: what the records show (every sample agrees, no
    wrong or no right sample, too few scored responses)."""
    if "answers" in record:
        answers = {a for a in record["answers"] if a is not None}
        gold = record.get("gold")
        if settings.get("rule") == "gold" and gold is not None:
            from selfimprove.tasks.answers import same_answer

            right = [same_answer(a, gold) for a in record["answers"]]
            if all(right):
                return {"reason": "no wrong sample", "detail": "every sample is right: nothing to reject"}
            if not any(right):
                return {"reason": "no right sample", "detail": "no sample is right and there is no gold solution"}
        if len(answers) == 1 and None not in record["answers"]:
            return {"reason": "unanimous", "detail": f"every sample answers {answers.pop()}: nothing to reject"}
    if "mean_scores" in record and sum(m is not None for m in record["mean_scores"]) < 2:
        return {"reason": "too few scored", "detail": "fewer than two of its responses have a score"}
    return {"reason": "none made", "detail": f"the pair rule {settings.get('rule')} made no pair of it"}


def _entry(item: dict, record: dict, stage: str, n: int | None) -> dict:
    """A pair as `show` lists it: its texts, the samples they are, its weight, margin and why."""
    fields = {key: value for key, value in record.items() if key not in TEXTS}
    rejected = record.get("rejected")
    entry = {"by": stage, "in": [], "prompt": record.get("prompt"), "chosen": record.get("chosen"),
             "rejected": rejected, "weight": record.get("weight", 1.0),
             "chosen_sample": _sample_index(item, record.get("chosen"), chosen=True),
             "rejected_sample": _sample_index(item, rejected, chosen=False) if rejected is not None else None,
             "fields": fields, "why": [], "trained": None, "dropped": None, "dropped_by": None}
    votes = [_field(item, entry[f"{side}_sample"], "votes") for side in ("chosen", "rejected")]
    if all(isinstance(v, int) for v in votes):
        entry["votes"] = votes
    entry["margin"] = _gap(fields)
    if entry["margin"] is None and "votes" in entry and n:  # a vote pair: the vote margin (ScPO's weight)
        entry["margin"] = (votes[0] - votes[1]) / n
    entry["why"] = describe(entry, n)
    return entry


def _gap(fields: dict) -> float | None:
    chosen, rejected = fields.get("chosen_score"), fields.get("rejected_score")
    if isinstance(chosen, (int, float)) and isinstance(rejected, (int, float)):
        return chosen - rejected
    return None


def describe(entry: dict, n: int | None = None) -> list[str]:
    """Why the pair is what it is, from the provenance its rule recorded (selfimprove.scoring.pairs.Pair)."""
    fields, why = entry["fields"], []
    if "votes" in entry:
        why.append(f"votes {entry['votes'][0]} vs {entry['votes'][1]}" + (f" of {n}" if n else ""))
    if _gap(fields) is not None:
        why.append(f"scores {number(fields['chosen_score'])} vs {number(fields['rejected_score'])}, "
                   f"margin {number(entry['margin'])}")
    elif "score" in fields:
        why.append(f"best score {number(fields['score'])}")
    for name in ("diversity", "temperature", "length"):
        if f"chosen_{name}" in fields and not isinstance(fields[f"chosen_{name}"], list):
            why.append(f"{name} {number(fields[f'chosen_{name}'])} vs {number(fields[f'rejected_{name}'])}")
    if "length_limit" in fields:
        swapped = ", which swaps the pair" if fields.get("lift_swapped") else ""
        why.append(f"length limit {fields['length_limit']} words{swapped}")
    if "label" in fields:
        why.append(f"right verdict {fields['label']}")
    if "answer" in fields and "agreement" in fields:
        why.append(f"answer {fields['answer']}, given by {fields['agreement']:.0%} of "
                   f"{fields.get('system2_samples')} samples")
    for flag, text in (("rejected_from_extra", "rejected is an extra sample"),
                       ("rejected_unsplittable", "rejected has no response marker")):
        if fields.get(flag):
            why.append(text)
    if fields.get("chosen_verdict_right") is not None:
        why.append("chosen judgement's verdict is " + ("right" if fields["chosen_verdict_right"] else "wrong"))
    return why


def _sample_index(item: dict, text: str | None, chosen: bool) -> int | None:
    """The sample a pair's text is (a chosen one among the voters first), or None (a gold solution, a
    judgement, an SFT target)."""
    rows = sorted(item["samples"], key=lambda row: row["extra"]) if chosen else item["samples"]
    return next((row["sample"] for row in rows if row["text"] == text), None)


def _field(item: dict, index: int | None, name: str):
    row = next((row for row in item["samples"] if row["sample"] == index), None) if index is not None else None
    return row["fields"].get(name) if row else None


def _finish(it: Iteration) -> None:
    """Once every pairs file is in: a pair is trained on when the last writer's file has it; one left out
    names the stage that left it out; a prompt is wrong when a trained pair's chosen response is."""
    if not it.pair_writers:
        return
    last = it.pair_writers[-1]
    for item in it.items.values():
        for entry in item["pairs"]:
            entry["trained"] = last in entry["in"]
            if not entry["trained"] and entry["dropped"] is None:
                entry["dropped_by"] = it.pair_writers[it.pair_writers.index(entry["in"][-1]) + 1]
                entry["dropped"] = f"left out by {entry['dropped_by']}"
        kept = [e["fields"].get("chosen_correct") for e in item["pairs"] if e["trained"]]
        if any(value is not None for value in kept):
            item["wrong"] = any(value is False for value in kept)
