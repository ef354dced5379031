"""Score every sampled response with an LLM judge (LLM-as-a-judge, Self-Rewarding's additive rubric by
default): n judgements per response, parsed and averaged, every judgement kept.

    python -m selfimprove.stages.judge --params params.yaml --run self_rewarding --iteration 1 \
        --model runs/self_rewarding/it0/model --samples runs/self_rewarding/it1/samples.jsonl \
        --out runs/self_rewarding/it1/judgements.jsonl --stats runs/self_rewarding/it1/judge.json

The judge sees the question and the response only: with judge.response_marker set (TPO), the thought
before the marker is cut off, and an output without the marker cannot be split, is not judged and is
marked unsplittable (the pair rules reject it). Health figures go to the stats file; a parse-failure
rate above judge.max_failure_rate fails the stage, quoting what the judge wrote. Resumable in shards.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from selfimprove import judging
from selfimprove.answers import extract_final, same_answer
from selfimprove.models import model_identity
from selfimprove.shards import discard, fingerprint, run_in_shards
from selfimprove.stages._io import (iteration_stage_args, read_jsonl, read_section, revision_for, stage_main,
                                    write_json, write_jsonl)


def judge_prompts(samples: list[dict], template: str, marker: str) -> list[dict]:
    """One item per sample: its response and the judge prompt, or prompt None when it cannot be split."""
    items = []
    for row in samples:
        split = judging.split_response(row["completion"], marker)
        response = split[1] if split else None
        prompt = template.format(question=row["question"], response=response) if split else None
        items.append({"id": row["id"], "sample": row["sample"], "response": response, "judge_prompt": prompt})
    return items


def collect(samples: list[dict], judged: list[dict], settings: dict) -> list[dict]:
    """One record per prompt: its completions, responses, judgements, scores, mean scores, and whether
    each response is right where a gold answer exists (statistics only; no pair rule reads it)."""
    by_prompt: dict[int, list[tuple[dict, dict]]] = defaultdict(list)
    for row, item in zip(samples, judged):
        by_prompt[row["id"]].append((row, item))
    records = []
    for prompt_id in sorted(by_prompt):
        rows = by_prompt[prompt_id]
        first = rows[0][0]
        scores = [[judging.parse_score(t, settings["score_pattern"], settings["max_score"]) for t in item["judgements"]]
                  for _, item in rows]
        records.append({
            "id": prompt_id, "prompt": first["prompt"], "question": first["question"], "gold": first.get("gold"),
            "completions": [row["completion"] for row, _ in rows],
            "responses": [item["response"] for _, item in rows],
            "unsplittable": [item["response"] is None for _, item in rows],
            "judgements": [item["judgements"] for _, item in rows],
            "scores": scores,
            "mean_scores": [judging.mean(s) for s in scores],
            "correct": [_correct(row) for row, _ in rows],
        })
    return records


def _correct(row: dict) -> bool | None:
    if row.get("gold") is None:
        return None
    return same_answer(extract_final(row["completion"]), row["gold"])


def judge(settings: dict, samples: list[dict], model_ref: str, out: str | Path, revision: str | None = None,
          generate_judgements=None) -> tuple[list[dict], dict]:
    """Judge the samples; return (records, health figures). generate_judgements(prompts, on_done) -> n texts
    per prompt may be given (tests script a judge with it); by default the judge model samples them."""
    out = Path(out)
    template = judging.load_template(settings["template"])
    items = judge_prompts(samples, template, settings["response_marker"])
    if generate_judgements is None:
        generate_judgements = (_endpoint_judge(settings) if settings["source"] == "openai"
                               else _model_judge(settings, model_ref, revision))

    def work(shard: list[dict], index: int, on_done) -> list[dict]:
        todo = [item for item in shard if item["judge_prompt"] is not None]
        texts = iter(generate_judgements([item["judge_prompt"] for item in todo], index, on_done) if todo else [])
        return [{**item, "judgements": next(texts) if item["judge_prompt"] is not None else []} for item in shard]

    key = fingerprint(settings, items, model_identity(model_ref, revision))
    judged, _ = run_in_shards("judge", items, settings["shard_size"], out, key, work, unit="responses")
    records = collect(samples, judged, settings)
    figures = judging.health(records, settings["max_score"])
    judging.check_failure_rate(records, figures, settings["max_failure_rate"], settings["score_pattern"])
    write_jsonl(out, records)
    discard(out)
    return records, figures


def _model_judge(settings: dict, model_ref: str, revision: str | None):
    """n sampled judgements per prompt from a local or hub model, loaded on first use."""
    loaded = {}

    def generate_judgements(prompts: list[str], shard_index: int, on_done) -> list[list[str]]:
        from selfimprove import models
        from selfimprove.sampling import sample

        if not loaded:
            loaded["model"], loaded["tokenizer"] = models.load(model_ref, revision)
        return sample(loaded["model"], loaded["tokenizer"], prompts, settings["n"], settings["temperature"],
                      settings["top_p"], settings["max_new_tokens"], settings["batch_size"],
                      seed=settings["seed"] * 100003 + shard_index, on_batch=on_done)

    return generate_judgements


def _endpoint_judge(settings: dict):
    """n judgements per prompt from an OpenAI-compatible server."""
    from selfimprove.openai_api import Endpoint

    endpoint = Endpoint(settings["endpoint"], settings["api_model"], settings["api_key_env"], settings["concurrency"],
                        settings["timeout"], settings["max_retries"])

    def generate_judgements(prompts: list[str], shard_index: int, on_done) -> list[list[str]]:
        return endpoint.complete(prompts, settings["n"], settings["temperature"], settings["top_p"],
                                 settings["max_new_tokens"], on_done)

    return generate_judgements


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "samples", "out", "stats")
    run = read_section(args.params, args.run)
    settings = run[f"it{args.iteration}"]["judge"]
    _, figures = judge(settings, read_jsonl(args.samples), args.model, args.out, revision_for(run, args.model))
    write_json(args.stats, figures)
    agreement = f", agreement with gold {figures['judge_sample_agreement']:.3f}" if "judge_sample_agreement" in figures else ""
    print(f"judge: {figures['judge_judgements']} judgements, parse failures {figures['judge_parse_failure_rate']:.1%}, "
          f"ties {figures['judge_tie_rate']:.1%}{agreement}")


if __name__ == "__main__":
    stage_main(main)
