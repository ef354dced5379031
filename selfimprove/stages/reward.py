"""Score every sampled response with a reward: a built-in rule, a user's Python function, or a reward model.

    python -m selfimprove.stages.reward --params params.yaml --run rft --iteration 1 \
        --samples runs/rft/it1/samples.jsonl --out runs/rft/it1/rewards.jsonl --stats runs/rft/it1/reward.json

The judge stage's sibling: it writes the same records (one per prompt, a list of scores per response,
their means), so every scored pair rule reads either. With reward.response_marker set, only the text
after the marker is scored; an output without the marker cannot be split, gets no score and is marked
unsplittable. Health figures go to the stats file; a share of responses without a score above
reward.max_missing_rate fails the stage, quoting one of them.
"""

from __future__ import annotations

import random
from collections import defaultdict

from selfimprove.scoring import judging, rewards
from selfimprove.tasks.answers import extract_final, same_answer
from selfimprove.core.errors import UserError
from selfimprove.core.registry import REWARD_RULES
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import iteration_stage_args, read_jsonl, read_section, stage_main, write_json, write_jsonl


def reward(settings: dict, samples: list[dict]) -> tuple[list[dict], dict]:
    """Score the samples; return (records, health figures). Fails when too many responses have no score."""
    splits = [judging.split_response(row["completion"], settings["response_marker"]) for row in samples]
    responses = [split[1] if split else None for split in splits]
    scores, truncated = score(settings, samples, responses)
    records = collect(samples, responses, scores)
    figures = {**health(records), "reward_truncated": truncated}
    check_missing_rate(records, figures, settings)
    return records, figures


def score(settings: dict, samples: list[dict], responses: list[str | None]) -> tuple[list, int]:
    """(one score or None per sample, how many texts the reward model had to cut); unsplittable ones get None."""
    todo = [(row, response) for row, response in zip(samples, responses) if response is not None]
    if settings["source"] == "model":
        found, truncated = (rewards.model_scores(settings, [row["question"] for row, _ in todo], [r for _, r in todo])
                            if todo else ([], 0))
    else:
        rule, truncated = rewards.rule(settings), 0
        random.seed(settings["seed"])  # a user's function that samples scores the same every run
        found = rewards.rule_scores(rule, [(row["id"], row["question"], response, row.get("gold")) for row, response in todo])
    given = iter(found)
    return [next(given) if response is not None else None for response in responses], truncated


def collect(samples: list[dict], responses: list[str | None], scores: list) -> list[dict]:
    """One record per prompt in the judge stage's format (see stages/judge.py collect): completions,
    responses, one judgement line and a list of scores per response ([] without a score), mean scores,
    and whether each response is right where a gold answer exists (statistics only)."""
    by_prompt: dict[int, list[tuple[dict, str | None, float | None]]] = defaultdict(list)
    for row, response, value in zip(samples, responses, scores):
        by_prompt[row["id"]].append((row, response, value))
    records = []
    for prompt_id in sorted(by_prompt):
        rows = by_prompt[prompt_id]
        first = rows[0][0]
        per_response = [[value] if value is not None else [] for _, _, value in rows]
        records.append({
            "id": prompt_id, "prompt": first["prompt"], "question": first["question"], "gold": first.get("gold"),
            "completions": [row["completion"] for row, _, _ in rows],
            "responses": [response for _, response, _ in rows],
            "unsplittable": [response is None for _, response, _ in rows],
            "judgements": [_judgement(value) for _, _, value in rows],
            "scores": per_response,
            "mean_scores": [judging.mean(s) for s in per_response],
            "correct": [_correct(row) for row, _, _ in rows],
            **judging.carried([row for row, _, _ in rows]),
        })
    return records


def _judgement(value: float | None) -> list[str]:
    """The audit line of a response's reward, where the judge keeps its judgements' text. One line per
    score, none without one: as in the judge's records, judgements[i] and scores[i] pair up."""
    return [f"reward {value:.4g}"] if value is not None else []


def _correct(row: dict) -> bool | None:
    if row.get("gold") is None:
        return None
    return same_answer(extract_final(row["completion"]), row["gold"])


def health(records: list[dict]) -> dict:
    """Reward health: missing scores, ties, the range, and agreement with the truth where gold exists
    (a reward above the middle of the observed range read as 'right')."""
    per_response = [s for r in records for s in r["scores"]]
    values = [s[0] for s in per_response if s]
    scored_prompts = [r for r in records if sum(m is not None for m in r["mean_scores"]) >= 2]
    ties = sum(len({m for m in r["mean_scores"] if m is not None}) == 1 for r in scored_prompts)
    figures = {
        "reward_responses": len(per_response),
        "reward_missing_rate": (len(per_response) - len(values)) / len(per_response) if per_response else 0.0,
        "reward_unsplittable": sum(r["unsplittable"].count(True) for r in records),
        "reward_tie_rate": ties / len(scored_prompts) if scored_prompts else 0.0,
        "reward_mean": sum(values) / len(values) if values else 0.0,
        "reward_min": min(values, default=0.0),
        "reward_max": max(values, default=0.0),
    }
    middle = (figures["reward_min"] + figures["reward_max"]) / 2
    checks = [(s[0] > middle) == correct for r in records for s, correct in zip(r["scores"], r["correct"])
              if s and correct is not None]
    if checks:
        figures["reward_sample_agreement"] = sum(checks) / len(checks)  # on this iteration's samples, vs gold
    return figures


def check_missing_rate(records: list[dict], figures: dict, settings: dict) -> None:
    """Fail with one response that got no score when too many did not."""
    rate, limit = figures["reward_missing_rate"], settings["max_missing_rate"]
    if rate <= limit:
        return
    completion, response = next((c, r) for record in records for c, r, s in
                                zip(record["completions"], record["responses"], record["scores"]) if not s)
    example = (f"the completion {completion[-200:]!r} has no marker {settings['response_marker']!r}" if response is None
               else f"{settings['source']} gave no score to the response {response[-200:]!r}")
    raise UserError(f"reward: {rate:.0%} of {figures['reward_responses']} responses have no reward (limit {limit:.0%}, "
                    f"reward.max_missing_rate); e.g. {example}. Fix reward.response_marker or the scorer, or raise "
                    "reward.max_missing_rate")


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "samples", "out", "stats")
    settings = read_section(args.params, args.run)[f"it{args.iteration}"]["reward"]
    records, figures = reward(settings, read_jsonl(args.samples))
    write_jsonl(args.out, records)
    write_json(args.stats, figures)
    agreement = (f", agreement with gold {figures['reward_sample_agreement']:.3f}"
                 if "reward_sample_agreement" in figures else "")
    print(f"reward: {figures['reward_responses']} responses, missing {figures['reward_missing_rate']:.1%}, "
          f"ties {figures['reward_tie_rate']:.1%}, mean {figures['reward_mean']:.3f}{agreement}")


SETTINGS = {
    "source": Setting(str, "correct", "correct | json_keys (rules), model (a reward model), or a Python function "
                      "as module:function(question, response, gold) -> float | None",
                      file=True, resolve_file=rewards.callable_file, reads=Setting.Reads("callable")),
    "keys": Setting(str, "", "source json_keys: the keys the JSON object must hold, comma-separated"),
    "model": Setting(str, "", "source model: a sequence-classification checkpoint, a directory or a hub id",
                     file=True, resolve_file=rewards.model_dir, reads=Setting.Reads("model")),
    "revision": Setting(str, "", "source model: the hub revision of reward.model (ignored for a directory)"),
    "chat_template": Setting(bool, False, "source model: score the exchange in the tokenizer's chat template"),
    "batch_size": Setting(int, 32, "source model: texts per forward pass; lower it if memory runs out",
                          check=lambda v: v >= 1, fix="must be >= 1"),
    "response_marker": Setting(str, "", "TPO: only the text after it is scored (\"\" = everything)"),
    "max_missing_rate": Setting(float, 0.5, "a larger share of responses without a score fails the stage",
                                check=lambda v: 0 <= v <= 1, fix="must be between 0 and 1"),
    "seed": Setting(int, 0, "seeds torch and random before scoring"),
}


@declaration
def check(settings: dict, problems, top: dict) -> None:
    """Cross-setting problems: an unknown source, a reward model not named, json_keys without keys."""
    path = ("stages",)
    section = settings["reward"]
    source = section["source"]
    problem = rewards.unknown_source(source)
    if problem:
        problems.add(path + ("reward", "source"), problem)
    elif source == "model" and not section["model"]:
        problems.add(path + ("reward", "model"), "reward.source model needs a reward model; set reward.model to "
                     "a directory or a hub id")
    elif source == "json_keys" and not rewards.wanted_keys(section):
        problems.add(path + ("reward", "keys"), "reward.source json_keys needs the keys to look for; set "
                     "reward.keys, e.g. 'answer,reason'")


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    return ctx.node(STAGE, cmd=ctx.command(STAGE, samples=ctx.inputs["samples"], out=out["scores"], stats=out["reward_stats"]),
                    deps=[ctx.inputs["samples"]], params=[ctx.section("reward")], outs=[out["scores"]], metrics=[out["reward_stats"]])


@declaration
def plugins(ctx: Context) -> list[tuple[str, str]]:
    """The registered reward rule the stage runs, or a module:function of the package (a builtin task's
    rule): code of the stage."""
    source = ctx.settings["reward"]["source"]
    if source in REWARD_RULES:
        return [("reward rule", source)]
    module = rewards.package_module(source)
    return [("module", module)] if module else []


STAGE = Stage("reward", SETTINGS, node=node, reads=("samples",),
              writes={"scores": "rewards.jsonl", "reward_stats": "reward.json"}, check=check,
              included=lambda settings: False,  # only where a loop's pipeline names it
              plugins=plugins)


if __name__ == "__main__":
    stage_main(main)
