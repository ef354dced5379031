"""Voting and ScPO's pair rule on hand-made samples."""

import random
from pathlib import Path

from selfimprove.core.registry import stage_defaults
from selfimprove.scoring.rules.votes import gold_pairs, scpo_pair
from selfimprove.stages.pairs import build_pairs
from selfimprove.stages.vote import vote

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = stage_defaults("pairs")


def settings(**overrides):
    return dict(DEFAULTS, **overrides)


def samples(prompt_id, completions, gold="5"):
    return [{"id": prompt_id, "prompt": f"q{prompt_id}", "gold": gold, "completion": c} for c in completions]


def test_vote_counts_answers_and_ignores_unparseable():
    [record] = vote(samples(0, ["#### 5", "#### 5", "#### 4", "nothing", "#### 5", "#### 3", "#### 4", "#### 5"]))
    assert record["votes"] == {"5": 4, "4": 2, "3": 1}
    assert (record["majority"], record["majority_votes"], record["n"]) == ("5", 4, 8)
    assert record["answers"][3] is None


def test_scpo_pair_is_most_vs_least_voted_with_margin_weight():
    [record] = vote(samples(0, ["#### 5"] * 5 + ["#### 4", "#### 4", "#### 3"]))
    pair = scpo_pair(record, 0.5, random.Random(0))
    assert pair["chosen"] == "#### 5" and pair["rejected"] == "#### 3"
    assert pair["weight"] == (5 - 1) / 8
    assert pair["chosen_correct"]


def test_unparseable_sample_is_least_voted():
    [record] = vote(samples(0, ["#### 5"] * 6 + ["#### 4", "garbage"]))
    pair = scpo_pair(record, 0.5, random.Random(0))
    assert pair["rejected"] == "garbage" and pair["weight"] == 6 / 8


def test_tau_drops_prompts_and_stats_count_them():
    records = vote(samples(0, ["#### 5"] * 4 + ["#### 1", "#### 2", "#### 3", "#### 4"])       # 4/8 votes
                   + samples(1, ["#### 7"] * 6 + ["#### 1", "#### 2"], gold="8")               # 6/8, wrong
                   + samples(2, ["#### 9"] * 8, gold="9"))                                      # unanimous
    pairs, stats = build_pairs(records, settings(min_votes=0.5))
    assert [p["id"] for p in pairs] == [0, 1]  # the unanimous prompt has nothing to reject
    assert stats["dropped_below_tau"] == 0 and stats["chosen_correct"] == 1 and stats["majority_correct"] == 2
    pairs, stats = build_pairs(records, settings(min_votes=0.7))
    assert [p["id"] for p in pairs] == [1] and stats["dropped_below_tau"] == 1


def test_pairs_are_deterministic_for_a_seed():
    records = vote(samples(0, ["#### 5 a", "#### 5 b", "#### 5 c", "#### 4 x", "#### 3 y", "#### 2 z"]))
    first, _ = build_pairs(records, settings(min_votes=0.5), seed=3)
    again, _ = build_pairs(records, settings(min_votes=0.5), seed=3)
    assert first == again


def test_extra_samples_never_vote_but_supply_the_rejected_answer():
    rows = samples(0, ["#### 5"] * 8 + ["#### 9", "#### 5"])  # unanimous voters, then 2 extra samples
    for row in rows[8:]:
        row["extra"] = True
    [record] = vote(rows)
    assert record["n"] == 8 and record["votes"] == {"5": 8}
    pair = scpo_pair(record, 0.5, random.Random(0))
    assert pair["rejected"] == "#### 9" and pair["rejected_from_extra"] and pair["weight"] == 1.0
    assert scpo_pair(vote(rows[:8])[0], 0.5, random.Random(0)) is None  # without extras: nothing to reject


def test_tau_schedule_from_the_loop_file_reaches_the_pairs(tmp_path):
    from selfimprove.loop.loopfile import load_loop

    loop = load_loop(ROOT / "loops/scpo.yaml")
    taus = [loop.per_iteration[k]["pairs"]["min_votes"] for k in (1, 2, 3)]
    extra = [loop.per_iteration[k]["generate"]["extra_n"] for k in (1, 2, 3)]
    assert taus == [0.5, 0.7, 0.7] and extra == [0, 8, 8]
    # 5 of 8 votes passes tau = 0.5k (4) and fails tau = 0.7k (5.6)
    [record] = vote(samples(0, ["#### 5"] * 5 + ["#### 1", "#### 2", "#### 3"]))
    assert scpo_pair(record, taus[0], random.Random(0)) is not None
    assert scpo_pair(record, taus[1], random.Random(0)) is None


def test_gold_rule_cycles_correct_and_incorrect_lists_with_the_solution_added():
    [record] = vote(samples(0, ["a #### 5", "b #### 4", "c #### 3", "d #### 5"]))
    record["solution"] = "gold #### 5"
    pairs = gold_pairs(record, per_question=10)
    # correct = [a, d, gold], incorrect = [b, c]: lcm(3, 2) = 6 distinct pairs, not 10
    assert [(p["chosen"][0], p["rejected"][0]) for p in pairs] == [
        ("a", "b"), ("d", "c"), ("g", "b"), ("a", "c"), ("d", "b"), ("g", "c")]
    assert all(p["weight"] == 1.0 and p["chosen_correct"] for p in pairs)
    assert len(gold_pairs(record, per_question=2)) == 2
    assert gold_pairs(vote(samples(1, ["#### 5", "#### 5"]))[0], 10) == []  # nothing incorrect: skipped


def test_semi_supervised_uses_gold_pairs_for_the_labelled_share_only():
    records = []
    for i in range(200):  # every question: majority 7 (wrong), gold 5 present once
        records += vote(samples(i, ["#### 7"] * 6 + ["#### 5", "#### 6"], gold="5"))
    pairs, stats = build_pairs(records, settings(rule="semi_supervised", labelled_fraction=0.25))
    gold = [p for p in pairs if p["source"] == "gold"]
    assert 30 <= len(gold) <= 70 and stats["gold_pairs"] == len(gold)  # about 25% of 200
    assert all(p["chosen"] == "#### 5" and p["weight"] == 1.0 for p in gold)
    votes = [p for p in pairs if p["source"] == "vote"]
    assert len(gold) + len(votes) == 200 and all(p["chosen"] == "#### 7" for p in votes)
    again, _ = build_pairs(records, settings(rule="semi_supervised", labelled_fraction=0.25))
    assert [p["source"] for p in again] == [p["source"] for p in pairs]  # the labelled set is fixed


def test_irpo_pairs_script_sorts_rejected_answers_by_their_mistake(tmp_path):
    """examples/scpo-vs-irpo/irpo_pairs.py: the kinds of rejected response behind IRPO's third iteration
    (README, "ScPO vs IRPO"), on the task's own formats, and its per-iteration figures."""
    import importlib.util
    import json

    from selfimprove.tasks.tinyarith import direct_solution, worked_solution

    path = Path(__file__).resolve().parent.parent / "examples/scpo-vs-irpo/irpo_pairs.py"
    spec = importlib.util.spec_from_file_location("irpo_pairs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    question = "156+953="
    assert module.kind(question, direct_solution(150, 953)) == "direct"
    assert module.kind(question, worked_solution(156, 853)) == "wrong step"  # the tail copies a wrong running sum
    assert module.kind(question, " 6+3=9 r9; 5+5=10 r09; 1+9+1=11 r1109; #### 1108") == "wrong copy"
    assert module.kind(question, " 6+3=9 r9; 5+5=10 r09; 1+9+1=11 r1109; ##11109") == "other"
    right = worked_solution(156, 953)
    rows = [{"id": 0, "prompt": question, "chosen": right, "rejected": r}
            for r in (direct_solution(150, 953), worked_solution(156, 853), worked_solution(156, 853))]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = module.iteration_figures(tmp_path / "pairs.jsonl")
    assert figures["pairs"] == 3 and figures["questions"] == 1 and figures["distinct_rejected"] == 2
    assert figures["rejected direct"] == 1 / 3 and figures["rejected wrong step"] == 2 / 3
