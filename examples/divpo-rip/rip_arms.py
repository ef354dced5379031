"""RIP's miniature, arm by arm and seed by seed, on the pairs of one finished run of loops/rip.yaml.

    selfimprove run loops/rip.yaml                      # iteration 1's pairs, filtered pairs and evaluation
    python examples/divpo-rip/rip_arms.py rip --seeds 0 1 2

Every arm trains the run's base model on a subset of the same iteration-1 pairs (same generation, same
judgements), with the run's train settings and train.seed = each seed, and is evaluated with the run's
evaluate settings on its eval set: `unfiltered` (all pairs: what `--set "pipeline=[generate, judge,
pairs, train, evaluate]"` trains on), `rip` (the pairs the run's filter settings keep) and `random`
(a seeded random subset of the pairs as large as RIP's: "fewer pairs" without "better pairs"). Prints
each arm's greedy accuracy per seed and pooled over seeds, with 95% Wilson intervals. Runs from the
project directory; writes under runs/<RUN>-arms/.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import yaml

from selfimprove.results import wilson
from selfimprove.stages import filter as rip


def arms(pairs: list[dict], filter_settings: dict) -> dict[str, list[dict]]:
    kept, _ = rip.rip_filter(pairs, filter_settings)
    subset = sorted(random.Random(0).sample(pairs, len(kept)), key=lambda p: p["id"])
    return {"unfiltered": pairs, "rip": kept, "random": subset}


def stage(module: str, params: Path, section: str, **paths: str) -> None:
    flags = [f for name, path in paths.items() for f in (f"--{name}", path)]
    # the stage's own progress goes to stderr (selfimprove.stages.progress, every 10 s); say which it is
    print(f"  {module} ({section})", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", f"selfimprove.stages.{module}", "--params", str(params), "--run", section,
                    "--iteration", "1", *flags], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    params = yaml.safe_load(Path("params.yaml").read_text())
    run, base = params[args.run], f"runs/builtin/{params[args.run]['model'].removeprefix('builtin:')}"
    pairs = [json.loads(line) for line in Path(f"runs/{args.run}/it1/pairs.jsonl").read_text().splitlines()]
    out = Path(f"runs/{args.run}-arms")
    out.mkdir(parents=True, exist_ok=True)
    for arm, subset in arms(pairs, run["it1"]["filter"]).items():
        accuracies = []
        for seed in args.seeds:
            name, where = f"{arm}-s{seed}", out / f"{arm}-s{seed}"
            where.mkdir(exist_ok=True)
            (where / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in subset))
            section = copy.deepcopy(run)
            section["it1"]["train"]["seed"] = seed
            arm_params = out / "params.yaml"
            arm_params.write_text(yaml.safe_dump({**params, name: section}, sort_keys=False))
            if not (where / "metrics.json").exists():
                stage("train", arm_params, name, model=base, pairs=str(where / "pairs.jsonl"), out=str(where / "model"))
                stage("evaluate", arm_params, name, model=str(where / "model"), out=str(where / "metrics.json"))
            metrics = json.loads((where / "metrics.json").read_text())
            accuracies.append((metrics["greedy_correct"], metrics["problems"]))
        per_seed = ", ".join(f"{c / n:.1%} [{wilson(c, n)[0]:.1%}, {wilson(c, n)[1]:.1%}]" for c, n in accuracies)
        correct, n = sum(c for c, _ in accuracies), sum(n for _, n in accuracies)
        low, high = wilson(correct, n)
        bad = sum(bool(p.get("prompt_bad")) for p in subset)
        print(f"{arm:10s} {len(subset)} pairs ({bad} from bad prompts); seeds {per_seed}; "
              f"pooled {correct / n:.1%} [{low:.1%}, {high:.1%}]")


if __name__ == "__main__":
    main()
