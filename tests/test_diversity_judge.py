"""DivPO's LLM diversity judge: the verdict is parsed into +1 / -1 / 0 per response (None when it cannot
be), the divpo rule's judge criterion reads it, and a loop composes the stage between reward and pairs."""

import random
from pathlib import Path

from selfimprove.pipeline import compiler
from selfimprove.loop.loopfile import load_loop
from selfimprove.core.registry import stage_defaults
from selfimprove.scoring.rules.divpo import divpo
from selfimprove.core import templates
from selfimprove.stages.diversity import judge_diversity, pool_prompt, verdict

from fakes import ScriptedModel

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = stage_defaults("diversity")


def record(completions, scores):
    return {"id": 0, "prompt": "sum 50:", "question": "sum 50:", "completions": completions,
            "responses": completions, "unsplittable": [False] * len(completions),
            "scores": [[s] for s in scores], "mean_scores": scores, "correct": [None] * len(completions)}


def test_verdicts_parse_to_plus_one_minus_one_and_zero_or_none():
    assert verdict("Most diverse: 3\nLeast diverse: 1", 4, SETTINGS) == [-1.0, 0.0, 1.0, 0.0]
    assert verdict("Most diverse: 5\nLeast diverse: 1", 4, SETTINGS) is None  # out of range
    assert verdict("Most diverse: 2\nLeast diverse: 2", 4, SETTINGS) is None  # the same response
    assert verdict("they all look alike", 4, SETTINGS) is None


def test_the_judge_sees_the_numbered_pool_and_divpo_follows_its_verdict():
    pools = [record([" 20+30", " 21+29", " 20+30", " 25+26"], [1.0, 1.0, 1.0, 0.0]),
             record([" 20+30", " 21+29"], [1.0, 0.0])]
    judge = ScriptedModel().enqueue(["Most diverse: 2\nLeast diverse: 3", "no idea"])
    judged, stats = judge_diversity(SETTINGS, pools, judge, templates.load("diversity", ("question", "responses")))
    assert "Response 2:\n 21+29" in judge.prompts[0] and "Request: sum 50:" in judge.prompts[0]
    assert judged[0]["diversity"] == [0.0, 1.0, -1.0, 0.0] and judged[1]["diversity"] is None
    assert stats == {"diversity_prompts": 2, "diversity_unparsed_rate": 0.5}
    pairs, stats = divpo(judged, {"rho": 0.0, "diversity": "judge"}, random.Random(0))
    assert pairs[0]["chosen"] == " 21+29" and pairs[0]["rejected"] == " 25+26"
    assert len(pairs) == 1 and stats["dropped_no_spread"] == 1  # an unread verdict makes no pair


def test_a_loop_composes_the_diversity_judge_between_reward_and_pairs():
    loop = load_loop(ROOT / "loops/divpo.yaml", ["pipeline=[generate, reward, diversity, pairs, train, evaluate]",
                                                "pairs.diversity=judge"])
    stages = compiler.compile_loop(loop, ROOT)[0]["stages"]
    assert stages["divpo-it1-diversity"]["deps"][0] == "runs/divpo/it1/rewards.jsonl"
    assert "--scored runs/divpo/it1/diversity.jsonl" in stages["divpo-it1-pairs"]["cmd"]
    assert "code.prompts-diversity_judge-txt" in stages["divpo-it1-diversity"]["params"]
    assert pool_prompt("{question}|{responses}", record([" 1"], [1.0])) == "sum 50:|Response 1:\n 1"
