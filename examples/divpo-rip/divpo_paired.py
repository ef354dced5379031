"""DivPO's miniature with paired intervals: each model's validity and diversity per held-out prompt, and
the differences between models over the same prompts.

    selfimprove run loops/divpo.yaml
    selfimprove run loops/divpo.yaml --set name=divpo-dpo --set pairs.rule=best_vs_worst
    python examples/divpo-rip/divpo_paired.py divpo base=runs/builtin/tiny-sums \\
        dpo=runs/divpo-dpo/it3/model divpo=runs/divpo/it3/model

Draws the evaluate stage's samples again with the run's evaluate settings and seed (the figures equal
the run's metrics), then bootstraps prompts (10,000 resamples) for a 95% interval of each mean and of
each paired difference against the first model. Runs from the project directory.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import yaml

from selfimprove.tasks import data as data_sources
from selfimprove.backends import open_backend
from selfimprove.tasks import sums

FIGURES = ("validity", "distinct_valid", "entropy")


def per_prompt(run: dict, model: str, records: list[dict]) -> list[tuple[float, float, float]]:
    settings = run["it1"]["evaluate"]
    backend = open_backend(run, model)
    prompts = [run["data"]["prompt_template"].format(question=r["question"]) for r in records]
    # the greedy pass first, as in the evaluate stage, so that the sampled draws are the same
    backend.sample(prompts, 1, 0.0, 1.0, settings["max_new_tokens"], settings["batch_size"], settings["seed"],
                   on_batch=_say(f"{model}: greedy", len(prompts)))
    samples = backend.sample(prompts, settings["k"], settings["temperature"], settings["top_p"],
                             settings["max_new_tokens"], settings["batch_size"], settings["seed"],
                             on_batch=_say(f"{model}: {settings['k']} samples each", len(prompts)))
    backend.close()
    rows = []
    for record, completions in zip(records, samples):
        valid = [a for c in completions if (a := sums.answer_of(record["question"], c)) is not None]
        rows.append((len(valid) / len(completions), len(set(valid)), sums.entropy_bits(valid)))
    return rows


def _say(what: str, total: int):
    """A progress line per forward pass (on stderr, apart from the table): sampling takes minutes."""
    return lambda done: print(f"  {what}: {done}/{total} prompts", file=sys.stderr, flush=True)


def interval(values: list[float], draws: list[list[int]], sign: str = "") -> str:
    means = sorted(sum(values[i] for i in draw) / len(values) for draw in draws)
    low, mean, high = means[250], sum(values) / len(values), means[9749]
    return f"{mean:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("models", nargs="+", help="NAME=MODEL_DIRECTORY; the first is the reference")
    args = parser.parse_args()
    run = yaml.safe_load(Path("params.yaml").read_text())[args.run]
    data = run["data"]
    records = data_sources.load_records(data["eval"], data, data["eval_size"], need_answers=False)
    models = [m.split("=", 1) for m in args.models]
    figures = {name: per_prompt(run, model, records) for name, model in models}
    rng = random.Random(0)
    draws = [[rng.randrange(len(records)) for _ in records] for _ in range(10000)]
    reference = models[0][0]
    for name, rows in figures.items():
        for j, figure in enumerate(FIGURES):
            line = f"{name:10s} {figure:15s} {interval([r[j] for r in rows], draws)}"
            if name != reference:
                diff = [a[j] - b[j] for a, b in zip(rows, figures[reference])]
                line += f"   minus {reference}: {interval(diff, draws, '+')}"
            print(line)


if __name__ == "__main__":
    main()
