"""Evaluate a model on the held-out labelled set: greedy accuracy and maj@k, as counts and ratios.

    python -m selfimprove.stages.evaluate --params params.yaml --run scpo --iteration 1 \
        --model runs/scpo/it1/model --out runs/scpo/it1/metrics.json
"""

from __future__ import annotations

from collections import Counter

from selfimprove import data as data_sources
from selfimprove.answers import extract_final, same_answer
from selfimprove.progress import Progress
from selfimprove.stages._io import iteration_stage_args, read_section, revision_for, write_json


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


def evaluate(settings: dict, records: list[dict], model_ref: str, template: str = "{question}",
             revision: str | None = None) -> dict:
    from selfimprove import models
    from selfimprove.sampling import sample

    model, tokenizer = models.load(model_ref, revision)
    prompts = [template.format(question=r["question"]) for r in records]
    # Progress in sequences: one greedy pass, then k samples per problem.
    progress = Progress("evaluate", len(prompts) * (1 + settings["k"]), "sequences")
    greedy = [texts[0] for texts in sample(model, tokenizer, prompts, 1, 0.0, 1.0, settings["max_new_tokens"],
                                           settings["batch_size"], settings["seed"], on_batch=progress.update)]
    samples = sample(model, tokenizer, prompts, settings["k"], settings["temperature"], settings["top_p"],
                     settings["max_new_tokens"], settings["batch_size"], settings["seed"],
                     on_batch=lambda done: progress.update(len(prompts) + done * settings["k"]))
    metrics = score(records, greedy, samples)
    metrics["k"] = settings["k"]
    return metrics


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "out")
    run = read_section(args.params, args.run)
    data = run["data"]
    records = data_sources.load_records(data["eval"], data, data["eval_size"])
    metrics = evaluate(run[f"it{args.iteration}"]["evaluate"], records, args.model, data["prompt_template"],
                       revision_for(run, args.model))
    write_json(args.out, metrics)
    print(f"evaluate: accuracy {metrics['accuracy']:.3f}, maj@{metrics['k']} {metrics['maj_at_k']:.3f}")


if __name__ == "__main__":
    main()
