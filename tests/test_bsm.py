"""Branch-Solve-Merge judging (the bsm stage): verdicts that survive the swap become direct verdicts."""

import pytest

from fakes import ScriptedModel


def bsm_settings(**change) -> dict:
    from selfimprove.stages.bsm import SETTINGS

    return {**{key: setting.default for key, setting in SETTINGS.items()}, "batch_size": 8, **change}


def bsm_judge(biased: bool):
    """Branch lists two criteria; solve says which answer holds 'right'; merge names it (or always A)."""
    def reply(prompt, j, rng):
        if "Write a list of up to five criteria" in prompt:
            return "- correctness\n- clarity\nThat is all."
        if "on one criterion only" in prompt:
            first = prompt.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
            return "A meets it" if "right" in first else "B meets it"
        if biased:
            return "[[A]]"
        return "[[A]]" if prompt.count("A meets it") == 2 else "[[B]]"
    return reply


def test_branch_solve_merge_keeps_a_verdict_that_survives_the_swap_as_a_direct_verdict(tmp_path):
    from selfimprove.stages.bsm import bsm

    pairs = [{"id": 0, "question": "Q?", "first": "the right one", "second": "the wrong one", "label": "first"}]
    backend = ScriptedModel(reply=bsm_judge(biased=False))
    examples, figures = bsm(bsm_settings(), pairs, "unused", tmp_path / "pairs.jsonl", backend=backend)
    assert figures["bsm_kept"] == 1 and figures["bsm_consistency"] == 1.0 and figures["bsm_kept_label_agreement"] == 1.0
    assert [e["completion"] for e in examples] == ["[[A]]", "[[B]]"]  # right one first, then second
    assert examples[0]["prompt"].startswith("Which of the two responses") and "criterion" not in examples[0]["prompt"]
    solve_prompts = backend.batches[1]
    assert len(solve_prompts) == 4 and sum("clarity" in p for p in solve_prompts) == 2  # 2 criteria x 2 orders
    _, biased = bsm(bsm_settings(), pairs, "unused", tmp_path / "b.jsonl",
                    backend=ScriptedModel(reply=bsm_judge(True)))
    assert biased["bsm_kept"] == 0 and biased["bsm_examples"] == 0  # [[A]] both ways names two responses


def test_bsm_criteria_are_the_listed_lines():
    from selfimprove.stages.bsm import criteria

    assert criteria("Criteria:\n- accuracy\n2. brevity\n* tone\n", 2) == ["accuracy", "brevity"]
    assert criteria("just be correct", 5) == ["just be correct"] and criteria("  ", 5) == []


def test_a_bsm_loop_is_checked_at_validate(tmp_path):
    from selfimprove.core.errors import UserError
    from selfimprove.loop.loopfile import load_loop

    loop = ("name: b\nmodel: builtin:tiny-arith\ndata: {prompts: builtin:arith/train, eval: builtin:arith/test}\n"
            "pipeline: [bsm, train, evaluate]\nstages:\n  train: {loss: sft}\n")
    (tmp_path / "loop.yaml").write_text(loop)
    with pytest.raises(UserError, match=r"stages.bsm.pairs_file: bsm needs pairs to judge"):
        load_loop(str(tmp_path / "loop.yaml"))
    (tmp_path / "p.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "loop.yaml").write_text(loop.replace("{loss: sft}", "{loss: dpo}\n  bsm: {pairs_file: "
                                                     + str(tmp_path / "p.jsonl") + "}"))
    with pytest.raises(UserError, match=r"stages.train.loss: dpo needs preference pairs, and bsm makes SFT"):
        load_loop(str(tmp_path / "loop.yaml"))




def test_a_bsm_merge_prefill_is_written_for_the_model_and_kept_in_the_verdict(tmp_path):
    """A model that never writes `[[A]]` on its own names the response after a prefilled `[[`."""
    from selfimprove.stages.bsm import bsm

    def reply(prompt, j, rng):
        judged = bsm_judge(biased=False)(prompt, j, rng)
        if "Weigh them" in prompt:  # the merge step: only the letter and the closing brackets, after the prefill
            assert prompt.endswith("[[")
            return judged[2:]
        return judged

    pairs = [{"id": 0, "question": "Q?", "first": "the right one", "second": "the wrong one", "label": "first"}]
    examples, figures = bsm(bsm_settings(prefill="[["), pairs, "unused", tmp_path / "pairs.jsonl",
                            backend=ScriptedModel(reply=reply))
    assert figures["bsm_unparsed"] == 0 and figures["bsm_kept"] == 1
    assert [e["completion"] for e in examples] == ["[[A]]", "[[B]]"]
    _, unprefilled = bsm(bsm_settings(), pairs, "unused", tmp_path / "u.jsonl",
                         backend=ScriptedModel(reply=lambda prompt, j, rng: "A]]" if "Weigh them" in prompt
                                               else reply(prompt, j, rng)))
    assert unprefilled["bsm_unparsed"] == 1 and unprefilled["bsm_examples"] == 0
