"""Self-Taught Evaluator: contrast pairs from modified instructions, pairwise judging in both orders,
rejection-sampled judgements balanced over verdicts, and pairwise accuracy on a labelled pair set."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from selfimprove.scoring import judging, pairwise
from selfimprove.tasks import tinyarith
from selfimprove.scoring.rules.judgements import judgement_dpo, judgement_sft
from selfimprove.stages import judge_eval, pairjudge, perturb
from selfimprove.tasks import arith_evaluator

from fakes import ScriptedModel

ROOT = Path(__file__).resolve().parent.parent


def tiny_judge(prompt: str, j: int, rng) -> str:
    """The right pairwise judgement of a tiny-arith-pairwise prompt."""
    question, a_part = re.match(r"(\d+\+\d+=)(\d+) B:", prompt).groups()
    x, y = map(int, question[:-1].split("+"))
    return arith_evaluator.pairwise_judgement(x, y, a_part)


@pytest.mark.parametrize("text, verdict", [("... [[A]]", "A"), ("[[B]] then [[A]]", "A"), ("[[a]]", None),
                                           ("Winner: A", None), ("[[C]]", None), ("", None)])
def test_the_verdict_is_the_last_one_stated_and_anything_else_is_a_failure(text, verdict):
    assert judging.parse_verdict(text, pairwise.VERDICT_PATTERN) == verdict


def test_majority_and_position_consistency():
    assert pairwise.majority(["A", "B", "A", None]) == "A"
    assert pairwise.majority(["A", "B"]) is None and pairwise.majority([None, None]) is None
    # the same response named in both orders (A first, then B) is consistent; the same letter is not
    assert pairwise.consistent("A", "B") is True and pairwise.consistent("A", "A") is False
    assert pairwise.consistent(None, "B") is None


def test_the_tiny_pairwise_judgement_is_the_pointwise_check_of_answer_a_ending_in_a_verdict():
    assert arith_evaluator.pairwise_judgement(47, 38, "85").endswith("85 vs 85: 8=8, 5=5. [[A]]")
    assert arith_evaluator.pairwise_judgement(47, 38, "84").endswith("84 vs 85: 8=8, 4/5. [[B]]")
    assert arith_evaluator.pairwise_judgement(47, 38, "84").rsplit(" [[", 1)[0] == tinyarith.check(47, 38, "84")[0]
    prompt = arith_evaluator.PAIRWISE_TEMPLATE.format(question="447+338=", response_a="786", response_b="785")
    assert prompt == "447+338=786 B:785 pair:"
    assert len(prompt) + len(arith_evaluator.pairwise_judgement(447, 338, "786")) < 128  # the model's positions


def test_the_seed_s_pairwise_examples_miss_subtle_errors_in_a_some_of_the_time():
    examples = arith_evaluator.pairwise_examples(random.Random(0), 4000, 3)
    subtle, gross, right_first = [], [], []
    for prompt, judgement, verdict in examples:
        question, a, b = re.match(r"(\d+\+\d+=)(\d+) B:(\d+)", prompt).groups()
        truth = sum(map(int, question[:-1].split("+")))
        if int(a) == truth:
            right_first.append(verdict)
        else:
            (subtle if abs(int(a) - truth) < 10 else gross).append(verdict)
    assert set(right_first) == {"A"} and set(gross) == {"B"}
    assert abs(subtle.count("A") / len(subtle) - arith_evaluator.SUBTLE_MISS) < 0.05


def test_a_nearby_problem_moves_one_digit_of_one_operand_by_one():
    rng = random.Random(0)
    for _ in range(200):
        a, b = tinyarith.make_problem(rng, 3)
        x, y = arith_evaluator.nearby_problem(rng, a, b)
        changed = [(u, v) for u, v in zip(f"{a}{b}", f"{x}{y}") if u != v]
        assert len(changed) == 1 and abs(int(changed[0][0]) - int(changed[0][1])) == 1
        assert len(str(x)) == len(str(a)) and len(str(y)) == len(str(b)) and x + y != a + b


def test_the_evaluator_bootstrap_mixes_in_few_pairwise_and_perturb_examples():
    settings = {"digits": 3, "direct_fraction": 0.6, "judge_fraction": 0.5, "meta_fraction": 0.1}
    examples = arith_evaluator.TASK.bootstrap_examples(0, 4000, settings)
    pairwise_share = sum(p.endswith(" pair:") for p, _ in examples) / len(examples)
    perturb_share = sum(p.endswith(" modify:") for p, _ in examples) / len(examples)
    assert abs(pairwise_share - arith_evaluator.PAIRWISE_SHARE) < 0.006
    assert abs(perturb_share - arith_evaluator.PERTURB_SHARE) < 0.015
    verdicts = [c[-3] for p, c in examples if p.endswith(" pair:")]
    # A is right half the time, and a subtle error in A (half the wrong ones) is missed SUBTLE_MISS of it
    expected = 0.5 + 0.25 * arith_evaluator.SUBTLE_MISS
    assert abs(verdicts.count("A") / len(verdicts) - expected) < 0.07


def samples(question: str, completions: list[str], gold: str) -> list[dict]:
    return [{"id": 0, "prompt": question, "question": question, "gold": gold, "sample": j, "extra": False,
             "completion": c} for j, c in enumerate(completions)]


PERTURB = {"template": "tiny-arith-perturb", "prompt_template": "{question}", "answer": "solve",
           "instruction_pattern": r"^\s*(\d+\+\d+=)", "response_pattern": "(x)", "good": "majority",
           "response_marker": "####", "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 12, "batch_size": 8,
           "shard_size": 8, "seed": 0, "tries": 1}
GENERATE = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 56}


def test_perturb_pairs_the_self_consistent_response_with_the_answer_to_a_nearby_problem(tmp_path):
    def model(prompt, j, rng):
        if prompt.endswith(" modify:"):
            return " 47+39="
        x, y = map(int, prompt[:-1].split("+"))
        return f" #### {x + y}"

    rows = samples("47+38=", [" #### 84", " 7+8=15 r5; 4+3+1=8 r85; #### 85", " #### 85"], "85")
    backend = ScriptedModel(reply=model)
    pairs, figures = perturb.perturb(PERTURB, GENERATE, rows, "unused", tmp_path / "contrast.jsonl", "{question}",
                                     backend=backend)
    assert backend.prompts == ["47+38=85 modify:", "47+39="]  # the majority answer is shown, then x' answered
    assert [(p["good"], p["bad"], p["modified_instruction"]) for p in pairs] == [
        (" 7+8=15 r5; 4+3+1=8 r85; #### 85", " #### 86", "47+39=")]
    assert figures["perturb_good_correct_rate"] == 1.0 and figures["perturb_bad_correct_rate"] == 0.0


@pytest.mark.parametrize("written, solved, reason", [("garbage", " #### 86", "unparsed"),
                                                     (" 47+38=", " #### 86", "same_instruction"),
                                                     (" 38+47=", " #### 85", "same_response")])
def test_perturb_drops_what_is_not_a_contrast(tmp_path, written, solved, reason):
    backend = ScriptedModel(reply=lambda p, j, rng: written if p.endswith(" modify:") else solved)
    pairs, figures = perturb.perturb(PERTURB, GENERATE, samples("47+38=", [" #### 85"], "85"), "unused",
                                     tmp_path / "c.jsonl", "{question}", backend=backend)
    assert pairs == [] and figures[f"perturb_dropped_{reason}"] == 1


def test_perturb_reads_the_paper_s_format_inline(tmp_path):
    output = ("[Modified Instruction]\nName a blue fruit.\n\n[The Start of Assistant's Answer to the Modified "
              "Instruction]\nBlueberries.\n[The End of Assistant's Answer to the Modified Instruction]")
    settings = {**PERTURB, "template": "worse-response", "answer": "inline", "response_marker": "",
                **{k: perturb.SETTINGS[k].default for k in ("instruction_pattern", "response_pattern")}}
    rows = samples("Name a red fruit.", ["Strawberries."], None)
    backend = ScriptedModel(reply=lambda p, j, rng: output)
    pairs, _ = perturb.perturb(settings, GENERATE, rows, "unused", tmp_path / "c.jsonl", "{question}", backend=backend)
    assert "[User Question]\nName a red fruit." in backend.prompts[0] and "Strawberries." in backend.prompts[0]
    assert [(p["modified_instruction"], p["bad"]) for p in pairs] == [("Name a blue fruit.", "Blueberries.")]


PAIRJUDGE = {**{k: s.default for k, s in pairjudge.SETTINGS.items()}, "template": "tiny-arith-pairwise",
             "response_marker": "####", "n": 3, "max_new_tokens": 96, "batch_size": 8, "shard_size": 4}


def contrast(n: int) -> list[dict]:
    rng = random.Random(1)
    rows = []
    for i, record in enumerate(tinyarith.problems(seed=0, count=n, digits=3, split="train")):
        rows.append({"id": i, "question": record["question"], "good": f" #### {record['answer']}",
                     "bad": f" #### {int(record['answer']) + rng.choice([1, 10, 100])}"})
    return rows


def test_pairjudge_judges_both_orders_and_reports_a_position_biased_judge(tmp_path):
    judged, figures = pairjudge.pair_judge(PAIRJUDGE, contrast(6), "unused", tmp_path / "j.jsonl",
                                           backend=ScriptedModel(reply=tiny_judge))
    assert [o["label"] for o in judged] == ["A", "B"] * 6 and all(len(o["verdicts"]) == 3 for o in judged)
    assert figures["pairjudge_label_agreement"] == 1.0 and figures["pairjudge_position_consistency"] == 1.0
    assert figures["pairjudge_first_position_rate"] == 0.5 and figures["pairjudge_pairs"] == 6
    _, biased = pairjudge.pair_judge(PAIRJUDGE, contrast(6), "unused", tmp_path / "k.jsonl",
                                     backend=ScriptedModel(reply=lambda p, j, rng: "... [[A]]"))
    assert biased["pairjudge_label_agreement"] == 0.5 and biased["pairjudge_position_consistency"] == 0.0
    assert biased["pairjudge_first_position_rate"] == 1.0


def test_pairjudge_fails_in_one_line_quoting_the_judge_when_verdicts_do_not_parse(tmp_path):
    from selfimprove.core.errors import UserError

    with pytest.raises(UserError, match=r"pairjudge: 100% of 36 judgements have no verdict .* wrote e.g. 'Winner: A'"):
        pairjudge.pair_judge(PAIRJUDGE, contrast(6), "unused", tmp_path / "j.jsonl",
                             backend=ScriptedModel(reply=lambda p, j, rng: "Winner: A"))


def order(i: int, label: str, verdicts: list) -> dict:
    return {"id": i, "prompt": f"p{i}{label}", "label": label, "verdicts": verdicts,
            "judgements": [f"j{i}{label}{k}:{v}" for k, v in enumerate(verdicts)]}


def test_rejection_sampling_keeps_one_right_judgement_and_balances_the_verdicts():
    records = [order(0, "A", ["A", "B", "A"]), order(0, "B", ["B", None, "A"]), order(1, "A", ["A", "A", "A"]),
               order(1, "B", ["A", "A", None]), order(2, "A", ["A", "B", "B"]), order(2, "B", ["A", "A", "A"])]
    examples, stats = judgement_sft(records, {"min_correct": 0.0}, random.Random(0))
    # right judgements exist for 0A, 0B, 1A, 2A: three A against one B, so two A are dropped
    assert stats["dropped_no_right_judgement"] == 2 and stats["dropped_balance"] == 2
    assert sorted(e["label"] for e in examples) == ["A", "B"] and stats["kept_verdict_a"] == 1
    for e in examples:
        assert e["completion"].endswith(":" + e["label"]) and e["completion"] == e["chosen"]
    examples, stats = judgement_sft(records, {"min_correct": 0.5}, random.Random(0))
    assert stats["dropped_below_min_correct"] == 2  # 0B (1 of 3) and 2A (1 of 3)


def test_judgement_dpo_pairs_a_right_judgement_with_a_wrong_or_unparsed_one():
    records = [order(0, "A", ["A", "B"]), order(0, "B", ["B", None]), order(1, "A", ["A", "A"])]
    pairs, stats = judgement_dpo(records, {"min_correct": 0.0}, random.Random(0))
    assert stats["dropped_no_wrong_judgement"] == 1 and len(pairs) == 2
    for p in pairs:
        assert p["chosen"].endswith(":" + p["label"]) and not p["rejected"].endswith(":" + p["label"])


def test_pairwise_accuracy_counts_both_orders_and_the_majority_of_sampled_verdicts():
    orders = [{"label": label} for label in ("A", "B") * 3]
    greedy = [["[[A]]"], ["[[B]]"], ["[[A]]"], ["[[A]]"], ["none"], ["[[B]]"]]
    sampled = [["[[A]]", "[[A]]", "[[B]]"], ["[[B]]", "[[A]]", "[[B]]"], ["[[A]]", "[[B]]", "x"],
               ["[[B]]", "[[B]]", "[[A]]"], ["[[A]]", "[[A]]", "[[A]]"], ["[[A]]", "[[B]]", "x"]]
    figures = judge_eval.pairwise_metrics(orders, greedy, sampled, pairwise.VERDICT_PATTERN)
    assert figures["pairwise_accuracy"] == pytest.approx(4 / 6)
    assert figures["pairwise_both_orders_right"] == pytest.approx(1 / 3)
    assert figures["pairwise_parse_failure_rate"] == pytest.approx(1 / 6)
    assert figures["pairwise_position_consistency"] == pytest.approx(1 / 2)  # pairs 1 and 2 parse; pair 1 agrees
    assert figures["pairwise_maj_accuracy"] == pytest.approx(4 / 6)  # the tied majorities (orders 3, 6) count wrong
    assert figures["pairwise_sample_accuracy"] == pytest.approx(11 / 18)


def test_the_labelled_pair_file_is_checked_line_by_line(tmp_path):
    from selfimprove.core.errors import UserError

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "2+2=", "chosen": 4}\n')
    with pytest.raises(UserError, match=r"pairs.jsonl:2: chosen is int 4, not text"):
        judge_eval.read_pairs(str(path), 0)
    path.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{oops\n')
    with pytest.raises(UserError, match=r"pairs.jsonl:2: not valid JSON"):
        judge_eval.read_pairs(str(path), 0)
    assert len(judge_eval.read_pairs(str(path), 1)) == 1


def test_the_shipped_pair_sets_are_labelled_rightly_and_disjoint_from_training():
    for split in ("validation", "test"):
        rows = [json.loads(line) for line in (ROOT / f"examples/self_taught_evaluator/pairs_{split}.jsonl").open()]
        assert len(rows) == 400
        for row in rows:
            x, y = map(int, row["prompt"][:-1].split("+"))
            assert tinyarith._split_of(x, y) == split
            assert row["chosen"].endswith(f"#### {x + y}") and not row["rejected"].endswith(f"#### {x + y}")


def test_the_loop_compiles_with_judge_eval_as_its_only_evaluation(tmp_path):
    from selfimprove.pipeline.compiler import compile_loop
    from selfimprove.loop.loopfile import load_loop

    document, params = compile_loop(load_loop(str(ROOT / "loops/self_taught_evaluator.yaml")), tmp_path)
    stages = document["stages"]
    it0 = [name for name in stages if "-it0-" in name]
    assert it0 == ["self_taught_evaluator-it0-judge_eval"]
    it2 = [name.split("-", 2)[-1] for name in stages if "-it2-" in name]
    assert it2 == ["generate", "perturb", "pairjudge", "pairs", "train", "judge_eval"]
    train2 = stages["self_taught_evaluator-it2-train"]
    assert "--model runs/builtin/tiny-arith-evaluator " in train2["cmd"]  # from the seed, every iteration
    assert "--model runs/self_taught_evaluator/it1/model " in stages["self_taught_evaluator-it2-pairjudge"]["cmd"]
    assert "examples/self_taught_evaluator/pairs_test.jsonl" in stages["self_taught_evaluator-it0-judge_eval"]["deps"]
    assert "self_taught_evaluator.it0.pairjudge" in stages["self_taught_evaluator-it0-judge_eval"]["params"]
    assert params["self_taught_evaluator"]["it0"].keys() == {"judge_eval", "pairjudge"}


def test_other_loops_still_evaluate_the_base_model(tmp_path):
    from selfimprove.pipeline.compiler import compile_loop
    from selfimprove.loop.loopfile import load_loop

    document, _ = compile_loop(load_loop(str(ROOT / "loops/scpo.yaml")), tmp_path)
    assert [name for name in document["stages"] if "-it0-" in name] == ["scpo-it0-evaluate"]


def test_judge_eval_without_a_pair_set_and_judgement_sft_with_dpo_are_refused_at_validate(tmp_path):
    from selfimprove.core.errors import UserError
    from selfimprove.loop.loopfile import load_loop

    text = (ROOT / "loops/self_taught_evaluator.yaml").read_text()
    path = tmp_path / "loop.yaml"
    path.write_text(text.replace("pairs_file: examples/self_taught_evaluator/pairs_test.jsonl, ", ""))
    with pytest.raises(UserError, match=r"loop.yaml:\d+: stages.judge_eval.pairs_file: judge_eval needs a labelled pair set"):
        load_loop(str(path))
    path.write_text(text.replace("{loss: sft, from: base", "{loss: dpo, from: base"))
    with pytest.raises(UserError, match=r"stages.train.loss: dpo needs preference pairs"):
        load_loop(str(path))


TINY_LOOP = r"""
name: e
model: builtin:tiny-arith-evaluator
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 12, digits: 2}
iterations: 1
bootstrap: {steps: 40, batch_size: 16, digits: 2}
pipeline: [generate, perturb, pairjudge, pairs, train, judge_eval]
stages:
  generate:   {n: 2, max_new_tokens: 40, batch_size: 16}
  perturb:    {template: tiny-arith-perturb, answer: solve, instruction_pattern: '^\s*(\d+\+\d+=)', good: majority,
               response_marker: "####", max_new_tokens: 10}
  pairjudge:  {template: tiny-arith-pairwise, response_marker: "####", n: 2, max_new_tokens: 60, max_failure_rate: 1.0}
  pairs:      {rule: judgement_sft}
  train:      {loss: sft, from: base, batch_size: 2, max_length: 128}
  judge_eval: {pairs_file: pairs.jsonl, k: 2, max_new_tokens: 60}
"""


def test_the_loop_runs_end_to_end_through_the_cli_and_reports_pairwise_figures(tmp_path):
    import subprocess
    import sys

    (tmp_path / "loop.yaml").write_text(TINY_LOOP)
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": f"{a}+{b}=", "chosen": f" #### {a + b}", "rejected": f" #### {a + b + 1}"}) + "\n"
        for a, b in [(12, 34), (56, 17), (40, 41)]))
    done = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    for k in (0, 1):
        figures = json.loads((tmp_path / f"runs/e/it{k}/pairwise.json").read_text())
        assert figures["pairwise_pairs"] == 3 and figures["pairwise_judgements"] == 6 and figures["pairwise_k"] == 2
        assert 0 <= figures["pairwise_accuracy"] <= 1
    perturbed = json.loads((tmp_path / "runs/e/it1/perturb.json").read_text())
    assert perturbed["perturb_prompts"] == 12
    assert sum(v for key, v in perturbed.items() if key.startswith("perturb_dropped_")) + perturbed["perturb_pairs"] == 12
    shown = subprocess.run([sys.executable, "-m", "selfimprove.cli", "diff", "e@0", "e"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "pairwise_accuracy" in shown.stdout, shown.stdout + shown.stderr


def test_perturb_takes_the_first_try_that_modifies_the_instruction(tmp_path):
    writes = iter([" 47+38=", " 47+48=", " 57+38="])  # the model copies the question once, then modifies it
    backend = ScriptedModel(reply=lambda p, j, rng: next(writes) if p.endswith(" modify:") else " #### 95")
    pairs, figures = perturb.perturb({**PERTURB, "tries": 3}, GENERATE, samples("47+38=", [" #### 85"], "85"),
                                     "unused", tmp_path / "c.jsonl", "{question}", backend=backend)
    assert [p["modified_instruction"] for p in pairs] == ["47+48="] and figures["perturb_dropped_same_instruction"] == 0
