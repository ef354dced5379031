"""Evaluate a model on the held-out labelled set: greedy accuracy and maj@k, as counts and ratios; for
judge loops also the model's skill as a judge (agreement with the truth on held-out candidate answers)
and, with a response marker (TPO), how often it thinks before answering.

    python -m selfimprove.stages.evaluate --params params.yaml --run scpo --iteration 1 \
        --model runs/scpo/it1/model --out runs/scpo/it1/metrics.json
"""

from __future__ import annotations

from collections import Counter

from selfimprove import data as data_sources
from selfimprove import judging
from selfimprove.answers import extract_final, same_answer
from selfimprove.progress import Progress
from selfimprove.stages._io import iteration_stage_args, read_section, revision_for, stage_main, write_json


def score(records: list[dict], greedy: list[str], samples: list[list[str]]) -> dict:
    """Metrics from completions: greedy accuracy, maj@k, mean per-sample accuracy, parse failures."""
    n = len(records)
    greedy_correct = sum(same_answer(extract_final(g), r["answer"]) for r, g in zip(records, greedy))
    majority_correct = sample_correct = unparsed = total_samples = 0
    for record, texts in zip(records, samples):
        answers = [extract_final(t) for t in texts]
        unparsed += sum(a is None for a in answers)
        total_samples += len(answers)
        sample_correct += sum(same_answer(a, record["answer"]) for a in answers)
        counts = Counter(a for a in answers if a is not None)
        if counts and same_answer(counts.most_common(1)[0][0], record["answer"]):
            majority_correct += 1
    return {
        "problems": n,
        "greedy_correct": greedy_correct, "accuracy": greedy_correct / n if n else 0.0,
        "maj_correct": majority_correct, "maj_at_k": majority_correct / n if n else 0.0,
        "sample_accuracy": sample_correct / total_samples if total_samples else 0.0,
        "parse_failure_rate": unparsed / total_samples if total_samples else 0.0,
    }


def thinking(greedy: list[str], marker: str) -> dict:
    """How often an output thinks before its response (text before the marker), and its mean length."""
    splits = [judging.split_response(g, marker) for g in greedy]
    thoughts = [s[0] for s in splits if s is not None]
    return {"thought_rate": sum(bool(t) for t in thoughts) / len(greedy) if greedy else 0.0,
            "unsplittable_rate": sum(s is None for s in splits) / len(greedy) if greedy else 0.0,
            "mean_thought_length": sum(map(len, thoughts)) / len(thoughts) if thoughts else 0.0}


def judge_agreement(model, tokenizer, records: list[dict], judge: dict, size: int, seed: int,
                    on_batch=None) -> dict:
    """Greedy judgements of held-out candidate answers (half right, half slightly off): how often the
    verdict matches the truth. A judgement without a score counts as a disagreement, and is counted."""
    from selfimprove.sampling import sample

    candidates = judging.held_out_candidates(records, seed)[:size]
    template = judging.load_template(judge["template"])
    prompts = [template.format(question=c["question"], response=c["response"]) for c in candidates]
    texts = [t[0] for t in sample(model, tokenizer, prompts, 1, 0.0, 1.0, judge["max_new_tokens"],
                                  judge["batch_size"], seed, on_batch=on_batch)]
    scores = [judging.parse_score(t, judge["score_pattern"], judge["max_score"]) for t in texts]
    agree = sum(s is not None and judging.says_right(s, judge["max_score"]) == c["correct"]
                for s, c in zip(scores, candidates))
    return {"judge_agreement": agree / len(candidates) if candidates else 0.0,
            "judge_eval_candidates": len(candidates),
            "judge_eval_parse_failure_rate": sum(s is None for s in scores) / len(scores) if scores else 0.0}


def evaluate(settings: dict, records: list[dict], model_ref: str, template: str = "{question}",
             revision: str | None = None, judge: dict | None = None) -> dict:
    from selfimprove import models
    from selfimprove.sampling import sample

    model, tokenizer = models.load(model_ref, revision)
    prompts = [template.format(question=r["question"]) for r in records]
    judge_size = settings["judge_size"] if judge else 0
    # Progress in sequences: one greedy pass, then k samples per problem, then the judge's candidates.
    progress = Progress("evaluate", len(prompts) * (1 + settings["k"]) + judge_size, "sequences")
    greedy = [texts[0] for texts in sample(model, tokenizer, prompts, 1, 0.0, 1.0, settings["max_new_tokens"],
                                           settings["batch_size"], settings["seed"], on_batch=progress.update)]
    samples = sample(model, tokenizer, prompts, settings["k"], settings["temperature"], settings["top_p"],
                     settings["max_new_tokens"], settings["batch_size"], settings["seed"],
                     on_batch=lambda done: progress.update(len(prompts) + done * settings["k"]))
    metrics = score(records, greedy, samples)
    metrics["k"] = settings["k"]
    metrics["mean_length"] = sum(map(len, greedy)) / len(greedy) if greedy else 0.0
    if judge and judge["response_marker"]:
        metrics.update(thinking(greedy, judge["response_marker"]))
    if judge_size:
        done = len(prompts) * (1 + settings["k"])
        metrics.update(judge_agreement(model, tokenizer, records, judge, judge_size, settings["seed"],
                                       on_batch=lambda n: progress.update(done + n)))
    return metrics


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "out")
    run = read_section(args.params, args.run)
    data = run["data"]
    records = data_sources.load_records(data["eval"], data, data["eval_size"])
    stages = run[f"it{args.iteration}"]
    metrics = evaluate(stages["evaluate"], records, args.model, data["prompt_template"],
                       revision_for(run, args.model), judge=stages.get("judge"))
    write_json(args.out, metrics)
    judged = f", judge agreement {metrics['judge_agreement']:.3f}" if "judge_agreement" in metrics else ""
    print(f"evaluate: accuracy {metrics['accuracy']:.3f}, maj@{metrics['k']} {metrics['maj_at_k']:.3f}{judged}")


if __name__ == "__main__":
    stage_main(main)
