"""Faults: SIGKILLs of the whole process group at random moments across a 2-iteration loop.

    python benchmarks/chaos.py [--kills 20] [--seed 0]

Runs the tiny loop once uninterrupted (the reference), then again in a fresh project where
`selfimprove run` is started in its own process group and SIGKILLed --kills times, each time once a
randomly chosen stage (or a later one) is running plus a random 0.1-1.5 s (each restart resumes), then
left to finish. Prints: kills that landed while the run was working, the
final metrics against the reference (they must be equal), and how many times a stage that had already
finished (recorded in dvc.lock with its outputs present before the attempt) was run again (must be 0).
Other faults of issue 13 (a full disk, two loops at once, corrupted outputs) are not in this script yet.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

LOOP = """\
name: c
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 48, eval_size: 40, digits: 2}
iterations: 2
bootstrap: {steps: 150, batch_size: 32, digits: 2, layers: 1}
stages:
  generate: {n: 4, max_new_tokens: 40, shard_size: 4, batch_size: 16}
  pairs: {min_votes: 0.25}
  train: {batch_size: 2, save_steps: 2, lr: 1.0e-4, max_length: 64}
  evaluate: {k: 2, max_new_tokens: 40}
"""


def start(project: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "SELFIMPROVE_PROGRESS"}
    return subprocess.Popen([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def finished_stages(project: Path) -> set[str]:
    """Stages dvc.lock records whose outputs are all present."""
    lock = project / "dvc.lock"
    if not lock.exists():
        return set()
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {name for name, node in stages.items() if all((project / o["path"]).exists() for o in node.get("outs", []))}


def started_stages(project: Path, offset: int) -> tuple[list[str], int]:
    """Stages DVC started since byte `offset` of the run's log, and the new offset."""
    log = project / "runs/c/repro.log"
    if not log.exists():
        return [], offset
    text = log.read_text(errors="replace")
    return [line.split("'")[1] for line in text[offset:].splitlines() if line.startswith("Running stage '")], len(text)


def metrics(project: Path) -> dict:
    return {k: json.loads((project / f"runs/c/it{k}/metrics.json").read_text()) for k in (0, 1, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    reference, chaos = root / "reference", root / "chaos"
    for project in (reference, chaos):
        project.mkdir()
        (project / "loop.yaml").write_text(LOOP)
    started = time.monotonic()
    assert start(reference).wait() == 0, "the reference run failed"
    duration = time.monotonic() - started
    print(f"reference run: {duration:.0f} s")

    order, _ = started_stages(reference, 0)  # the stages in the order DVC runs them
    # Kill moments spread over the whole loop: each attempt waits until a chosen stage (or a later one)
    # is running, then kills after a random delay; the choices are sorted, so the kills move through
    # the loop as it resumes. (Killing at random wall-clock moments alone would land every kill in the
    # first long stage.)
    plan = sorted(rng.randrange(len(order) - 1) for _ in range(args.kills))  # the report takes a second: not a target
    landed, redone, offset, attempts, killed_in = 0, [], 0, 0, []
    for target in plan:
        before = finished_stages(chaos)
        process = start(chaos)
        attempts += 1
        seen, running = offset, None
        while process.poll() is None:
            ran, seen = started_stages(chaos, seen)
            running = ran[-1] if ran else running
            if running in order and order.index(running) >= target:
                break
            time.sleep(0.2)
        time.sleep(rng.uniform(0.1, 1.5))
        working = process.poll() is None
        if working:
            os.killpg(process.pid, signal.SIGKILL)
            landed += 1
        process.wait()
        ran, offset = started_stages(chaos, offset)
        redone += [name for name in ran if name in before]
        if working:
            killed_in.append(ran[-1] if ran else "(start-up)")
        else:
            print(f"the run finished before kill {landed + 1}")
            break
    before = finished_stages(chaos)
    final = start(chaos).wait()
    ran, offset = started_stages(chaos, offset)
    redone += [name for name in ran if name in before]
    same = final == 0 and metrics(chaos) == metrics(reference)
    print(f"kills landed while running: {landed} (attempts {attempts}); final run exit {final}")
    print(f"final metrics equal the uninterrupted run's: {same}")
    print("killed in: " + ", ".join(f"{name} x{killed_in.count(name)}" for name in dict.fromkeys(killed_in)))
    print(f"finished stages run again: {len(redone)} {sorted(set(redone))}")
    print(f"projects: {root}")


if __name__ == "__main__":
    main()
