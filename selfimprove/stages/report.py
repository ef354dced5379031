"""Collect a run's per-iteration metrics into one file, the run's last stage.

    python -m selfimprove.stages.report --run-dir runs/scpo --iterations 3 --out runs/scpo/metrics.json

Writes {"it0": {...}, "it1": {...}, ...} with each iteration's evaluation and pair statistics, so that
`dvc metrics show` lists a whole run. It is also the one target `selfimprove run` hands to `dvc repro`:
DVC then checks the run's stages once, instead of once per target (a no-op rerun in about 3 s, not 12).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfimprove.stages._io import stage_main, write_json


def iteration_figures(iteration_dir: Path) -> dict:
    """One iteration's evaluation (metrics.json), generation figures (generate.json: samples, time, tokens
    and cost where a backend reports them), pair statistics (pairs.json), judge health (judge.json) and
    meta-judge statistics (metajudge.json), merged; {} if none exists."""
    figures = {}
    for name in ("metrics.json", "generate.json", "pairs.json", "judge.json", "metajudge.json"):
        path = iteration_dir / name
        if path.exists():
            figures.update(json.loads(path.read_text()))
    return figures


def collect(run_dir: str | Path, iterations: int) -> dict:
    return {f"it{k}": iteration_figures(Path(run_dir) / f"it{k}") for k in range(iterations + 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    report = collect(args.run_dir, args.iterations)
    write_json(args.out, report)
    last = report[f"it{args.iterations}"]
    print(f"report: {args.iterations} iteration(s); last accuracy {last.get('accuracy', float('nan')):.3f}")


if __name__ == "__main__":
    stage_main(main)
