"""How well a model judges and what its outputs look like to a judge, measured by evaluation on held-out
prompts: agreement with the truth on candidate answers, how often it thinks before answering (TPO), and
its win rate against iteration 0 judged in both orders.

The evaluate stage runs this code only in loops that judge (its node names this module then: see
selfimprove.stages.evaluate's plugins), so editing it re-runs no evaluation of a loop without a judge.
"""

from __future__ import annotations

import random

from selfimprove.core import templates
from selfimprove.scoring import judging
from selfimprove.scoring.judge_scores import greedy_scores, winner_probabilities
from selfimprove.tasks import tinyarith
from selfimprove.tasks.answers import normalize_number, same_answer


def thinking(greedy: list[str], marker: str) -> dict:
    """How often an output thinks before its response (text before the marker), and its mean length."""
    splits = [judging.split_response(g, marker) for g in greedy]
    thoughts = [s[0] for s in splits if s is not None]
    return {"thought_rate": sum(bool(t) for t in thoughts) / len(greedy) if greedy else 0.0,
            "unsplittable_rate": sum(s is None for s in splits) / len(greedy) if greedy else 0.0,
            "mean_thought_length": sum(map(len, thoughts)) / len(thoughts) if thoughts else 0.0}


def judge_agreement(backend, records: list[dict], judge: dict, size: int, seed: int, on_batch=None) -> dict:
    """Greedy judgements of held-out candidate answers (half right, half slightly off): how often the
    verdict matches the truth. A judgement without a score counts as a disagreement, and is counted."""
    candidates = held_out_candidates(records, seed)[:size]
    template = judging.wrap(templates.load(judge["template"], ("question", "response")), judge)
    prompts = [template.format(question=c["question"], response=c["response"]) for c in candidates]
    scores = greedy_scores(backend, prompts, judge, seed, on_batch)
    agree = sum(s is not None and judging.says_right(s, judge["max_score"]) == c["correct"]
                for s, c in zip(scores, candidates))
    return {"judge_agreement": agree / len(candidates) if candidates else 0.0,
            "judge_eval_candidates": len(candidates),
            "judge_eval_parse_failure_rate": sum(s is None for s in scores) / len(scores) if scores else 0.0}


def held_out_candidates(records: list[dict], seed: int) -> list[dict]:
    """Candidate answers to judge for the agreement metric: for each labelled numeric problem, the right
    answer half the time, else one off by a small amount. Seeded, so every iteration judges the same."""
    rng = random.Random(f"judge-eval:{seed}")
    candidates = []
    for record in records:
        truth = normalize_number(record["answer"] or "")
        if truth is None or "." in truth:
            continue
        candidate = tinyarith.candidate_answer(rng, int(truth))
        candidates.append({"question": record["question"], "response": candidate,
                           "correct": same_answer(candidate, record["answer"])})
    return candidates


def win_rate(settings: dict, judge: dict, records: list[dict], outputs: list[str], base_outputs: list[str],
             judge_backend=None, generate_verdicts=None) -> dict:
    """Pairwise win rate of this iteration's greedy outputs against iteration 0's, on the first
    evaluate.win_rate_size held-out prompts, judged in both orders (A/B then B/A) by a fixed judge so the
    figures of all iterations are comparable. In judge.mode expected the judge's probabilities of `A`
    and `B` after `Winner: ` give a win probability per order; otherwise it writes a verdict (ties
    count half, an unparseable verdict is counted and left out). The two orders are averaged, which
    cancels a constant position bias; position_consistency says how often both orders agree. A judge
    in mode expected or generate_then_expected is read by probabilities here too."""
    size = min(settings["win_rate_size"], len(records), len(outputs), len(base_outputs))
    template = judging.wrap(templates.load(settings["win_template"], ("question", "response_a", "response_b")),
                            judge)
    prompts = []
    for record, ours, base in zip(records[:size], outputs, base_outputs):
        prompts.append(template.format(question=record["question"], response_a=ours, response_b=base))
        prompts.append(template.format(question=record["question"], response_a=base, response_b=ours))
    if judge["mode"] != "generate":
        probs = winner_probabilities(judge_backend, prompts, judge["batch_size"])
        wins = [_share(a, b) if first else _share(b, a) for (a, b), first in zip(probs, _alternating(size))]
    else:
        texts = (generate_verdicts(prompts) if generate_verdicts else
                 [t[0] for t in judge_backend.sample(prompts, 1, 0.0, 1.0, judge["max_new_tokens"], judge["batch_size"],
                                                     settings["seed"])])
        verdicts = [judging.parse_verdict(t, judging.WINNER_PATTERN, ties=True) for t in texts]
        wins = [None if v is None else 0.5 if v == "tie" else float((v == "A") == first)
                for v, first in zip(verdicts, _alternating(size))]
    if judge_backend:
        judge_backend.close()
    per_prompt = [(wins[2 * i], wins[2 * i + 1]) for i in range(size)]
    both = [(a, b) for a, b in per_prompt if a is not None and b is not None]
    decided = [(a, b) for a, b in both if a != 0.5 and b != 0.5]
    return {"win_rate_vs_base": sum(a + b for a, b in both) / (2 * len(both)) if both else 0.0,
            "win_prompts": len(both), "win_unparsed": sum(w is None for w in wins),
            "win_position_consistency": sum((a > 0.5) == (b > 0.5) for a, b in decided) / len(decided) if decided else 0.0,
            "win_first_position_rate": _first_position_rate(wins)}


def _alternating(size: int) -> list[bool]:
    """Whether this iteration's output is response A, for the 2*size prompts in win_rate's order."""
    return [True, False] * size


def _share(ours: float, theirs: float) -> float | None:
    return ours / (ours + theirs) if ours + theirs > 0 else None


def _first_position_rate(wins: list) -> float:
    """How often the response shown first wins (0.5 = no position bias)."""
    firsts = [w if first else 1 - w for w, first in zip(wins, _alternating(len(wins) // 2)) if w is not None]
    return sum(firsts) / len(firsts) if firsts else 0.0


