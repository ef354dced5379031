"""Rules that make SFT examples (a prompt and one completion, trained on with `train.loss: sft`) rather
than preference pairs: rejection sampling and System 2 distillation.

- `best_of_n` (rejection-sampling SFT; NaturalReasoning's self-training, Yuan et al. 2025): per prompt,
  the response with the highest score from any scorer (a judge, a reward model, a reward rule); ties are
  broken at random, a prompt whose best score is below `min_score` is dropped, and a response without a
  score takes no part.
- `system2` (Distilling System 2 into System 1, Yu et al. 2024): each prompt's System 2 samples are the
  ones that write intermediate steps before their final answer (`steps_only`) or all of them; the
  prompt is kept only when at least `min_votes` of them agree on one answer (output self-consistency),
  and the target is that answer alone in `answer_format`: no intermediate tokens, so the trained model
  answers directly what it used to reach only by reasoning. Where the samples were drawn with a
  reasoning prompt (generate.prompt_template), the example's prompt is the plain one
  (`system1_template`).
Each example also carries `chosen` (= the completion), so a preference loss reading it still works.
"""

from __future__ import annotations

import random
from collections import Counter

from selfimprove.scoring.pairs import make_pair
from selfimprove.tasks.answers import has_steps, same_answer
from selfimprove.core.stage import Setting


SETTINGS = {
    "min_score": Setting(float, float("-inf"), "best_of_n: drop a prompt whose best response scores lower",
                         omit_default=True),
    "steps_only": Setting(bool, True, "system2: vote over the samples that write steps before their answer "
                          "(false: over all samples)", omit_default=True),
    "system1_template": Setting(str, "", "system2: the distilled model's prompt ({question} is replaced); '' keeps "
                                "the prompt the samples had (set it when generate.prompt_template asks for "
                                "reasoning)", check=lambda v: not v or "{question}" in v,
                                fix="must contain {question} (or be '')", omit_default=True),
    "answer_format": Setting(str, " #### {answer}", "system2: the distilled target, with {answer} the majority "
                             "answer (the embedded task's direct format by default)",
                             check=lambda v: "{answer}" in v, fix="must contain {answer}", omit_default=True),
}


def example(record: dict, completion: str, source: str, **extra) -> dict:
    return make_pair(record["prompt"], completion, id=record["id"], completion=completion, source=source, **extra)


def best_of_n(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    floor = settings["min_score"]
    examples, no_score, below = [], 0, 0
    for record in records:
        scored = {i: m for i, m in enumerate(record["mean_scores"]) if m is not None}
        if not scored:
            no_score += 1
            continue
        best = max(scored.values())
        if best < floor:
            below += 1
            continue
        chosen = rng.choice([i for i, m in scored.items() if m == best])
        correct = (record.get("correct") or [None] * len(record["mean_scores"]))[chosen]
        examples.append(example(record, record["completions"][chosen], "best_of_n", score=best,
                                chosen_correct=correct))
    labelled = [e for e in examples if e["chosen_correct"] is not None]
    stats = {"prompts": len(records), "pairs": len(examples), "dropped_no_score": no_score,
             "dropped_below_min_score": below,
             "mean_best_score": sum(e["score"] for e in examples) / len(examples) if examples else 0.0,
             # statistics only (gold answers where the data has them): how often the best is right
             "chosen_correct": sum(e["chosen_correct"] for e in labelled), "labelled": len(labelled)}
    return examples, stats


def system2(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    steps_only, answer_format, system1 = settings["steps_only"], settings["answer_format"], settings["system1_template"]
    examples, no_samples, no_majority, majority_right, labelled = [], 0, 0, 0, 0
    used = 0
    for record in records:
        answers = [a for a, completion, extra in zip(record["answers"], record["completions"], record["extra"])
                   if not extra and (has_steps(completion) or not steps_only)]
        used += len(answers)
        counts = Counter(a for a in answers if a is not None)
        if not counts:
            no_samples += 1
            continue
        top = max(counts.values())
        majority = rng.choice(sorted(a for a, c in counts.items() if c == top))
        correct = same_answer(majority, record["gold"]) if record.get("gold") is not None else None
        if correct is not None:
            labelled += 1
            majority_right += correct
        if top < settings["min_votes"] * len(answers) or list(counts.values()).count(top) > 1:
            no_majority += 1  # no clear majority: the paper drops the input
            continue
        prompt = system1.format(question=record["question"]) if system1 else record["prompt"]
        examples.append(example(dict(record, prompt=prompt), answer_format.format(answer=majority), "system2", answer=majority,
                                agreement=top / len(answers), system2_samples=len(answers),
                                chosen_correct=correct))
    kept_labelled = [e for e in examples if e["chosen_correct"] is not None]
    stats = {"prompts": len(records), "pairs": len(examples), "dropped_no_system2_sample": no_samples,
             "dropped_no_majority": no_majority,
             "system2_samples_per_prompt": used / len(records) if records else 0.0,
             "mean_agreement": sum(e["agreement"] for e in examples) / len(examples) if examples else 0.0,
             # statistics only (gold answers where the data has them): System 2's own accuracy (its
             # majority answer on every prompt with a System 2 sample) and the kept targets' accuracy
             "system2_accuracy": majority_right / labelled if labelled else None,
             "kept_correct": sum(e["chosen_correct"] for e in kept_labelled), "labelled": len(kept_labelled)}
    return examples, stats


best_of_n.needs = "scores"
best_of_n.makes = "sft"
best_of_n.settings = {"min_score": SETTINGS["min_score"]}
system2.needs = "votes"
system2.makes = "sft"
system2.settings = {key: SETTINGS[key] for key in ("steps_only", "system1_template", "answer_format")}
