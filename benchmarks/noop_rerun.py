"""The no-op cost of `selfimprove run` on a finished loop vs `dvc status` on the same pipeline (target
ratio at most 1.5).

    python benchmarks/noop_rerun.py PROJECT LOOP [--set KEY=VALUE ...]
    e.g. python benchmarks/noop_rerun.py examples/scpo-vs-irpo/runs/seed0 loops/scpo.yaml \\
             --set iterations=3 --set data.seed=0 --set bootstrap.seed=0

PROJECT must hold a finished run of LOOP (with the same overrides). Prints the median of 3 timings each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed: {result.stdout[-500:]}{result.stderr[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("loop", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    run = [sys.executable, "-m", "selfimprove.cli", "run", str(args.loop.resolve()),
           *(f"--set={o}" for o in args.overrides)]
    status = [sys.executable, "-m", "dvc", "status"]
    run_s = statistics.median(timed(run, args.project) for _ in range(3))
    status_s = statistics.median(timed(status, args.project) for _ in range(3))
    print(f"selfimprove run (no-op): {run_s:.2f} s")
    print(f"dvc status:              {status_s:.2f} s")
    print(f"ratio:                   {run_s / status_s:.2f}")


if __name__ == "__main__":
    main()
