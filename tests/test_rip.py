"""RIP's prompt filter, Self-RIP's prompt synthesis helpers and the noisy-arith prompt pool (offline).

Every expected number below is worked out by hand in the comments."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml

from selfimprove.tasks import tinyarith
from selfimprove.core.errors import UserError
from selfimprove.stages.selfrip import PromptTokenizer, dedupe, fewshot_prompt, parse_new_prompt, pick_examples, rouge_l
from selfimprove.core.stage import Context
from selfimprove.stages import selfrip
from selfimprove.stages import filter as rip
from selfimprove.stages import synthesize
from selfimprove.tasks import noisy_arith

from fakes import ScriptedModel

OFF = {"min_rejected_reward_pct": -1, "min_rejected_length_pct": -1, "max_gap_pct": -1, "strict": True}

# Ten pairs with distinct values. Sorted, each metric is an arithmetic run, so p50 sits halfway between
# the 5th and 6th values (numpy's linear method: position 0.5 * 9 = 4.5).
#   rejected reward r: 0..9 by id                      -> p50 = 4.5, keep r > 4.5:  ids 5 6 7 8 9
#   rejected length L: 30 10 80 50 20 90 40 70 60 100  -> p50 = 55,  keep L > 55:   ids 2 5 7 8 9
#   gap g:             5 3 1 8 2 6 0 9 4 7             -> p50 = 4.5, keep g < 4.5:  ids 1 2 4 6 8
#   jointly: id 8 only.
R = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
L = [30, 10, 80, 50, 20, 90, 40, 70, 60, 100]
G = [5, 3, 1, 8, 2, 6, 0, 9, 4, 7]
BAD = {0, 1, 3, 6}


def pair(i: int, rejected, chosen, length: int, bad=None) -> dict:
    record = {"id": i, "prompt": f"p{i}", "chosen": "c", "rejected": "r" * length, "chosen_score": chosen,
              "rejected_score": rejected, "chosen_length": 1, "rejected_length": length, "weight": 1.0}
    if bad is not None:
        record["prompt_bad"] = bad
    return record


def ten(bad: bool = False) -> list[dict]:
    return [pair(i, R[i], R[i] + G[i], L[i], (i in BAD) if bad else None) for i in range(10)]


def kept_ids(pairs, **settings):
    kept, stats = rip.rip_filter(pairs, {**OFF, **settings})
    return [p["id"] for p in kept], stats


def test_each_rule_alone_at_the_median():
    assert kept_ids(ten(), min_rejected_reward_pct=50)[0] == [5, 6, 7, 8, 9]
    assert kept_ids(ten(), min_rejected_length_pct=50)[0] == [2, 5, 7, 8, 9]
    assert kept_ids(ten(), max_gap_pct=50)[0] == [1, 2, 4, 6, 8]
    assert kept_ids(ten())[0] == list(range(10))  # every rule off keeps everything


def test_the_default_is_the_papers_joint_median_rule():
    kept, stats = rip.rip_filter(ten(), rip.STAGE.defaults())
    assert [p["id"] for p in kept] == [8]
    assert kept[0] == ten()[8]  # pairs pass through unchanged
    assert stats["filter_prompts"] == 10 and stats["filter_kept"] == 1 and stats["filter_removed"] == 9
    # each rule alone, counted on all ten pairs
    assert (stats["filter_removed_by_rejected_reward"], stats["filter_removed_by_rejected_length"],
            stats["filter_removed_by_gap"]) == (5, 5, 5)
    assert (stats["filter_threshold_rejected_reward"], stats["filter_threshold_rejected_length"],
            stats["filter_threshold_gap"]) == (4.5, 55.0, 4.5)
    assert "filter_bad_prompts" not in stats  # the pairs carry no prompt_bad


def test_other_percentiles_interpolate_linearly():
    # p25 of 0..9: position 2.25 -> 2.25, keep r > 2.25: ids 3..9. p75 of the gaps: 6.75, keep g < 6.75:
    # every id but 3 (g 8), 7 (g 9) and 9 (g 7). Length p90: position 8.1 between 90 and 100 -> 91, keep id 9.
    ids, stats = kept_ids(ten(), min_rejected_reward_pct=25)
    assert ids == [3, 4, 5, 6, 7, 8, 9] and stats["filter_threshold_rejected_reward"] == 2.25
    assert "filter_threshold_gap" not in stats and stats["filter_removed_by_gap"] == 0  # off
    assert kept_ids(ten(), max_gap_pct=75)[0] == [0, 1, 2, 4, 5, 6, 8]
    ids, stats = kept_ids(ten(), min_rejected_length_pct=90)
    assert ids == [9] and stats["filter_threshold_rejected_length"] == pytest.approx(91.0)
    # two rules: r > 4.5 and g < 6.75 -> 5 6 8
    assert kept_ids(ten(), min_rejected_reward_pct=50, max_gap_pct=75)[0] == [5, 6, 8]


def test_strict_drops_ties_at_the_percentile_and_non_strict_keeps_them():
    # Discrete rewards: r = 1 1 1 1 1 1 5 5 3 3, chosen 5 everywhere, so g = 4 4 4 4 4 4 0 0 2 2.
    # Sorted r: 1 1 1 1 1 1 3 3 5 5 -> p50 = 1; sorted g: 0 0 2 2 4 4 4 4 4 4 -> p50 = 4.
    rewards = [1, 1, 1, 1, 1, 1, 5, 5, 3, 3]
    pairs = [pair(i, r, 5, 10) for i, r in enumerate(rewards)]
    ids, stats = kept_ids(pairs, min_rejected_reward_pct=50)
    assert ids == [6, 7, 8, 9] and stats["filter_threshold_rejected_reward"] == 1.0
    assert kept_ids(pairs, min_rejected_reward_pct=50, strict=False)[0] == list(range(10))
    assert kept_ids(pairs, max_gap_pct=50)[0] == [6, 7, 8, 9]
    assert kept_ids(pairs, max_gap_pct=50, strict=False)[0] == list(range(10))
    # equal lengths everywhere: strict "> p50" removes all, non-strict keeps all
    ids, stats = kept_ids(pairs, min_rejected_length_pct=50)
    assert ids == [] and stats["filter_removed_by_rejected_length"] == 10
    assert kept_ids(pairs, min_rejected_length_pct=50, strict=False)[0] == list(range(10))


def test_bad_and_good_counts():
    # bad ids 0 1 3 6. Jointly only 8 is kept: 4 bad prompts, all removed, 1 good kept.
    _, stats = rip.rip_filter(ten(bad=True), rip.STAGE.defaults())
    assert (stats["filter_bad_prompts"], stats["filter_bad_removed"], stats["filter_good_kept"]) == (4, 4, 1)
    # reward alone keeps 5..9: bad 6 survives (3 of 4 removed), good 5 7 8 9 kept
    _, stats = kept_ids(ten(bad=True), min_rejected_reward_pct=50)
    assert (stats["filter_bad_prompts"], stats["filter_bad_removed"], stats["filter_good_kept"]) == (4, 3, 4)


def test_an_unscored_rejected_response_fails_the_reward_and_gap_rules():
    # r = None 2 4, chosen 5: thresholds over the scored ones only, r p50 = 3 and g (3, 1) p50 = 2.
    pairs = [pair(0, None, 5, 50), pair(1, 2, 5, 50), pair(2, 4, 5, 50)]
    ids, stats = kept_ids(pairs, min_rejected_reward_pct=50)
    assert ids == [2] and stats["filter_threshold_rejected_reward"] == 3.0
    assert kept_ids(pairs, min_rejected_reward_pct=0, strict=False)[0] == [1, 2]  # r >= 2
    assert kept_ids(pairs, max_gap_pct=100, strict=False)[0] == [1, 2]  # g <= 3; None's gap is infinite


def test_no_pairs_and_pairs_without_scores():
    kept, stats = rip.rip_filter([], rip.STAGE.defaults())
    assert kept == [] and stats["filter_prompts"] == 0 and "filter_threshold_gap" not in stats
    with pytest.raises(UserError, match="best_vs_worst"):
        rip.rip_filter([{"id": 0, "prompt": "p", "chosen": "a", "rejected": "b"}], rip.STAGE.defaults())


def test_settings_and_declaration(monkeypatch):
    check = rip.SETTINGS["max_gap_pct"].check
    assert check(-1) and check(0) and check(50.0) and check(100)
    assert not check(-0.5) and not check(100.5)
    assert rip.STAGE.defaults() == {"min_rejected_reward_pct": 50.0, "min_rejected_length_pct": 50.0,
                                    "max_gap_pct": 50.0, "strict": True}
    assert rip.STAGE.included({}) is False and rip.STAGE.required({}) == ("pairs",)
    monkeypatch.setattr(rip.STAGE, "module", "selfimprove.stages.filter")
    d = "runs/rip/it1"
    ctx = Context(run="rip", k=1, out=d, settings={}, policy="m", policy_is_dep=False, base="m", base_is_dep=False,
                  inputs={"pairs": f"{d}/pairs.jsonl"},
                  outputs={"pairs": f"{d}/pairs_kept.jsonl", "filter_stats": f"{d}/filter.json"},
                  tracked=(), backend="hf", backend_keys=[], data_keys=lambda s: [], data_file=lambda s: [],
                  code_keys=lambda stage, s: [], file_deps=lambda stage, s: [])
    node = rip.STAGE.node(ctx)
    assert node["cmd"] == ("python -m selfimprove.stages.filter --params params.yaml --run rip --iteration 1 "
                           f"--pairs {d}/pairs.jsonl --out {d}/pairs_kept.jsonl --stats {d}/filter.json")
    assert node["deps"] == [f"{d}/pairs.jsonl"] and node["params"] == ["rip.it1.filter"]
    assert node["outs"] == [f"{d}/pairs_kept.jsonl"] and node["metrics"] == [{f"{d}/filter.json": {"cache": False}}]


def test_main_writes_the_kept_pairs_and_the_stats(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"rip": {"it2": {"filter": rip.STAGE.defaults()}}}))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in ten(bad=True)))
    rip.main(["--params", str(params), "--run", "rip", "--iteration", "2", "--pairs", str(tmp_path / "pairs.jsonl"),
              "--out", str(tmp_path / "kept.jsonl"), "--stats", str(tmp_path / "filter.json")])
    assert [json.loads(line)["id"] for line in (tmp_path / "kept.jsonl").read_text().splitlines()] == [8]
    assert json.loads((tmp_path / "filter.json").read_text())["filter_bad_removed"] == 4


# --- Self-RIP -----------------------------------------------------------------------------------------

def test_fewshot_prompt_and_parsing():
    assert fewshot_prompt(["1+2=", "3+4="]) == "Come up with a new task like these.\nTask 1: 1+2=\nTask 2: 3+4=\nTask 3: "
    assert fewshot_prompt(["a\nb", "c"], "{index}. {prompt}", header="") == "1. a b\n2. c\n3. "
    with pytest.raises(ValueError):
        fewshot_prompt([])
    assert parse_new_prompt("47+38=\nTask 10: 1+1=") == "47+38="
    assert parse_new_prompt("  12+3=  Task 10: 5+5=") == "12+3="
    assert parse_new_prompt("\nTask 10: 5+5=") is None and parse_new_prompt("") is None
    assert parse_new_prompt("Task 10: 5+5=") is None  # the model skipped its item
    assert parse_new_prompt("5+5= 6. x", "{index}. {prompt}") == "5+5="
    assert parse_new_prompt("List 3.5 things", "{index}. {prompt}") == "List 3.5 things"


def test_pick_examples_is_seeded_and_distinct():
    pool = [f"{i}+1=" for i in range(20)]
    picked = pick_examples(pool, seed=3)
    assert len(picked) == 8 == len(set(picked)) and set(picked) <= set(pool)
    assert picked == pick_examples(pool, seed=3) and picked != pick_examples(pool, seed=4)
    assert sorted(pick_examples(pool[:5], seed=0)) == sorted(pool[:5])


def test_tokens_and_rouge_l_by_hand():
    assert PromptTokenizer().tokenize("47+3 8=") == ["4", "7", "+", "3", "8", "="]
    assert PromptTokenizer().tokenize("Write a poem!") == ["write", "a", "poem", "!"]
    assert rouge_l("47+38=", "47+39=") == pytest.approx(10 / 12)  # LCS 4 7 + 3 = of 6 and 6 tokens
    assert rouge_l("47+38=", "12+90=") == pytest.approx(4 / 12)  # LCS + =
    assert rouge_l("1234+5678=", "1234+5999=") == pytest.approx(0.7)  # LCS 1 2 3 4 + 5 = : 2*7/20


def test_dedupe_near_duplicates_at_0_7():
    existing = ["47+38=", "1234+5678=", "Write a poem about cats"]
    candidates = ["47+39=",  # vs 47+38=: 10/12 = 0.83, dropped
                  "12+90=",  # vs 47+38=: 4/12; vs 1234+5678=: LCS 1 2 + = -> 8/16 = 0.5; kept
                  "12+91=",  # vs the kept 12+90=: 10/12, dropped
                  "1234+5999=",  # vs 1234+5678=: exactly 0.7, dropped (>=)
                  "1234+9999=",  # vs 1234+5678=: 12/20 = 0.6; vs 12+90=: LCS 1 2 + 9 = -> 10/16; kept
                  "write a poem about dogs"]  # 4 of 5 words: 0.8, dropped
    kept, dropped = dedupe(candidates, existing)
    assert kept == ["12+90=", "1234+9999="]
    assert dropped == ["47+39=", "12+91=", "1234+5999=", "write a poem about dogs"]
    assert "1234+5999=" in dedupe(candidates, existing, threshold=0.71)[0]


def test_dedupe_pruning_never_changes_the_answer():
    rng = random.Random(0)
    prompts = [f"{rng.randint(1, 99)}+{rng.randint(1, 99)}=" for _ in range(60)]
    existing, candidates = prompts[:20], prompts[20:]
    kept, pool = [], list(existing)
    for c in candidates:  # brute force: score every pair
        if all(rouge_l(p, c) < 0.7 for p in pool):
            kept.append(c)
            pool.append(c)
    assert dedupe(candidates, existing)[0] == kept


def test_synthesize_parses_dedupes_and_counts():
    examples = ["47+38=", "1234+5678="]
    script = ["12+90=\nTask 4: 5+5=",  # kept: the first line, cut at the next item
              "47+39=",  # 0.83 against the example 47+38=: a near-duplicate
              "",  # nothing written
              "1234+9999=",  # kept (0.6 and 0.625, see test_dedupe_near_duplicates_at_0_7)
              "12+91="]  # 0.83 against the new 12+90=
    settings = {**synthesize.STAGE.defaults(), "candidates": 5, "fewshot": 2}
    backend = ScriptedModel().enqueue(script)
    kept, stats = synthesize.synthesize(settings, examples, backend)
    assert kept == ["12+90=", "1234+9999="]
    assert stats == {"synthesize_candidates": 5, "synthesize_unparsed": 1, "synthesize_duplicates": 2,
                     "synthesize_prompts": 2}
    assert all(p.startswith(selfrip.HEADER) and p.endswith("Task 3: ") for p in backend.prompts)
    assert len(set(backend.prompts)) == 2  # both orders of the two examples, drawn per candidate by seed


def test_synthesize_main_on_a_real_model_writes_prompts_generate_reads(tmp_path, tiny_model):
    examples = tmp_path / "kept.jsonl"
    examples.write_text("".join(json.dumps(pair(i, 1, 5, 3)) + "\n" for i in range(10)))  # prompts p0..p9
    settings = {**synthesize.STAGE.defaults(), "candidates": 6, "max_new_tokens": 12, "temperature": 1.0}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"s": {"model": "x", "it1": {"synthesize": settings}}}))
    out, stats = tmp_path / "prompts.jsonl", tmp_path / "synthesize.json"
    argv = ["--params", str(params), "--run", "s", "--iteration", "1", "--model", tiny_model,
            "--examples", str(examples), "--out", str(out), "--stats", str(stats)]
    synthesize.main(argv)  # random weights, seeded: 5 new prompts of 6 candidates, one empty
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    figures = json.loads(stats.read_text())
    assert [r["id"] for r in rows] == list(range(figures["synthesize_prompts"])) and rows
    assert figures["synthesize_candidates"] == 6 == sum(figures[k] for k in ("synthesize_unparsed",
                                                                             "synthesize_duplicates",
                                                                             "synthesize_prompts"))
    texts = [r["question"] for r in rows] + [f"p{i}" for i in range(10)]
    assert all(rouge_l(a, b) < 0.7 for i, a in enumerate(texts) for b in texts[i + 1:] if a in texts[:len(rows)])
    synthesize.main(argv)  # seeded: the same prompts again
    assert [json.loads(line)["question"] for line in out.read_text().splitlines()] == [r["question"] for r in rows]


def test_synthesize_refuses_to_write_no_prompts(tmp_path, monkeypatch):
    examples = tmp_path / "kept.jsonl"
    examples.write_text(json.dumps({"question": "47+38="}) + "\n")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"s": {"model": "x", "it1": {"synthesize": {**synthesize.STAGE.defaults(),
                                                                                 "candidates": 2}}}}))
    monkeypatch.setattr(synthesize, "open_backend", lambda *a, **k: ScriptedModel().enqueue(["47+39=", ""]))
    with pytest.raises(UserError, match=r"none of 2 candidates is a new prompt \(1 empty, 1 near-duplicates\)"):
        synthesize.main(["--params", str(params), "--run", "s", "--iteration", "1", "--model", "m", "--examples",
                         str(examples), "--out", str(tmp_path / "p.jsonl"), "--stats", str(tmp_path / "s.json")])
    assert not (tmp_path / "p.jsonl").exists()


def test_self_rip_compiles_generate_reading_the_new_prompts(tmp_path):
    from selfimprove.pipeline import compiler
    from selfimprove.loop.loopfile import load_loop

    rip_loop = Path(__file__).resolve().parent.parent / "loops/rip.yaml"
    pipeline = "pipeline=[synthesize, generate, judge, pairs, filter, train, evaluate]"
    with pytest.raises(UserError, match="synthesize needs example prompts"):
        load_loop(rip_loop, ["name=self-rip", pipeline])
    loop = load_loop(rip_loop, ["name=self-rip", pipeline, "synthesize.examples=runs/rip/it1/pairs_kept.jsonl"])
    nodes = compiler.compile_loop(loop, tmp_path)[0]["stages"]
    made, generate = nodes["self-rip-it1-synthesize"], nodes["self-rip-it1-generate"]
    assert "runs/rip/it1/pairs_kept.jsonl" in made["deps"] and made["outs"] == ["runs/self-rip/it1/prompts.jsonl"]
    assert generate["cmd"].endswith("--prompts runs/self-rip/it1/prompts.jsonl")
    assert generate["deps"][0] == "runs/self-rip/it1/prompts.jsonl"
    # only the prompt template of the data is read: no other data key, no task code
    assert [p for p in generate["params"] if ".data." in p] == ["self-rip.data.prompt_template"]
    assert not any(p.startswith("code.tasks") for p in generate["params"])
    plain = compiler.compile_loop(load_loop(rip_loop), tmp_path)[0]["stages"]["rip-it1-generate"]
    assert "--prompts" not in plain["cmd"] and "rip.data.prompts" in plain["params"]


# --- noisy-arith ----------------------------------------------------------------------------------------

WELL_FORMED = re.compile(r"\d+\+\d+=")
D = {"digits": 2}  # the data section's operand size


def test_bad_share_and_bad_rows():
    rows = noisy_arith.rows(0, 1000, "train", D)
    bad = [r for r in rows if r["bad"]]
    assert abs(len(bad) / 1000 - 0.3) < 0.04
    assert all(r["answer"] is None and r["solution"] is None and not WELL_FORMED.fullmatch(r["question"]) for r in bad)
    assert {r["bad_kind"] for r in bad} == {"malformed", "ambiguous", "unanswerable"}
    half = noisy_arith.rows(0, 1000, "train", {**D, "bad_fraction": 0.5})
    assert abs(sum(r["bad"] for r in half) / 1000 - 0.5) < 0.05
    assert not any(r["bad"] for r in noisy_arith.rows(0, 50, "train", {**D, "bad_fraction": 0}))
    assert all(r["bad"] for r in noisy_arith.rows(0, 50, "train", {**D, "bad_fraction": 1}))
    with pytest.raises(ValueError):
        noisy_arith.rows(0, 5, "train", {**D, "bad_fraction": 1.5})


def test_characters():
    chars = noisy_arith.TASK.chars
    assert noisy_arith.TASK.name == "noisy-arith" and len(chars) == len(set(chars))
    assert chars[:len(tinyarith.CHARS)] == tinyarith.CHARS and set(chars) <= set(tinyarith.JUDGE_CHARS)
    text = "".join(r["question"] for split in ("train", "test") for r in noisy_arith.rows(1, 500, split, D))
    assert set(text) <= set(chars)


def test_good_rows_are_tinyariths_and_rows_are_deterministic():
    rows = noisy_arith.rows(0, 300, "train", D)
    good = [{k: v for k, v in r.items() if k != "bad"} for r in rows if not r["bad"]]
    assert good == tinyarith.problems(0, len(good), 2, "train")
    assert rows == noisy_arith.rows(0, 300, "train", D)
    assert rows[:100] == noisy_arith.rows(0, 100, "train", D)  # a longer pool extends a shorter one
    assert rows != noisy_arith.rows(1, 300, "train", D)
    assert all(not r["bad"] or "bad_kind" in r for r in noisy_arith.rows(0, 200, "train", {"digits": 1}))


def test_splits_are_disjoint():
    questions = {s: {r["question"] for r in noisy_arith.rows(0, 1000, s, D)} for s in ("train", "validation", "test")}
    assert not questions["train"] & questions["test"]
    assert not questions["train"] & questions["validation"]
    assert not questions["validation"] & questions["test"]


def test_bootstrap_examples_are_clean_tinyarith_examples():
    examples = noisy_arith.bootstrap_examples(0, 50, {"digits": 2, "direct_fraction": 0.7, "steps": 10})
    assert examples == tinyarith.bootstrap_examples(0, 50, 2, 0.7)
    assert all(WELL_FORMED.fullmatch(prompt) for prompt, _ in examples)
