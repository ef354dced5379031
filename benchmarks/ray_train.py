"""The train stage on the same pairs three ways: one process, two processes of `accelerate launch` (the
compiler's command for processes: 2) and a Ray Train job of two workers on a simulated two-node cluster
(train.launcher: ray). Prints each one's wall time, steps and final loss, the largest weight difference
from the accelerate run, and the fixed cost of a Ray job (a job of one step). Needs ray[train].

    .venv-vllm/bin/python benchmarks/ray_train.py [--pairs 256] [--epochs 1]

The stage runs as DVC runs it (`python -m selfimprove.stages.train ...`), the tiny-arith architecture
with random weights (4 layers), batch 4 per process, so the global batch is 4 for one process and 8 for
two (the Ray and accelerate runs train the same global batch; the one-process run is the baseline a
user starts from). The cluster is started once, before any run is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project(folder: Path, settings: dict, pairs: int) -> Path:
    import yaml

    from selfimprove.stages.untrained import save_untrained

    folder.mkdir(parents=True)
    save_untrained(folder / "base", layers=4)
    (folder / "params.yaml").write_text(yaml.safe_dump({"t": {"model": "base", "model_revision": None,
                                                               "it1": {"train": settings}}}))
    with open(folder / "pairs.jsonl", "w") as f:
        for i in range(pairs):
            a, b = 10 + i % 90, 10 + (i * 7) % 90
            f.write(json.dumps({"prompt": f"{a}+{b}=", "chosen": f" #### {a + b}", "rejected": f" #### {a + b + 1}",
                                "weight": 1.0}) + "\n")
    return folder


def run(folder: Path, settings: dict) -> tuple[float, dict]:
    from selfimprove.stages.train import launcher

    command = (f"{launcher(settings)} -m selfimprove.stages.train --params params.yaml --run t --iteration 1 "
               "--model base --pairs pairs.jsonl --out model")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], PYTHONPATH=str(ROOT))
    env.pop("SELFIMPROVE_PROGRESS", None)
    started = time.monotonic()
    result = subprocess.run(shlex.split(command), cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{folder.name} failed: {result.stderr[-2000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("train: "))
    return seconds, dict(part.split(" ", 1) for part in line.removeprefix("train: ").split(", "))


def difference(one: Path, other: Path) -> float:
    from safetensors.torch import load_file

    mine, theirs = load_file(one / "model/model.safetensors"), load_file(other / "model/model.safetensors")
    return max((mine[k] - theirs[k]).abs().max().item() for k in mine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    from selfimprove.core.registry import stage_defaults

    folder = Path(tempfile.mkdtemp(prefix="ray-train-"))
    os.environ["RAY_TMPDIR"] = str(folder / "ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    (folder / "ray").mkdir()
    from ray.cluster_utils import Cluster

    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cluster_seconds = time.monotonic() - started
    base = stage_defaults("train")
    base.update({"batch_size": 4, "max_length": 32, "lr": 1e-3, "epochs": args.epochs, "save_steps": 1000})
    on_ray = {"launcher": "ray", "ray_address": cluster.address, "ray_placement": "STRICT_SPREAD",
              "ray_resources_per_worker": {"CPU": 1}, "processes": 2}
    ways = {"one process": base, "accelerate, 2 processes": {**base, "processes": 2},
            "ray, 2 workers": {**base, **on_ray}, "ray, 1-step job": {**base, **on_ray, "max_steps": 1}}
    results = {}
    try:
        for name, settings in ways.items():
            path = project(folder / name.replace(" ", "_").replace(",", ""), settings, args.pairs)
            results[name] = (path, *run(path, settings))
    finally:
        cluster.shutdown()
    print(f"{args.pairs} pairs, {args.epochs:g} epoch(s), tiny-arith architecture (4 layers), batch 4 per process; "
          f"2-node cluster start {cluster_seconds:.1f} s (not in the figures)")
    reference = results["accelerate, 2 processes"][0]
    for name, (path, seconds, figures) in results.items():
        gap = difference(path, reference) if "2" in name and "1-step" not in name else float("nan")
        print(f"{name:26} {seconds:6.1f} s  steps {figures['steps']:>4}  loss {float(figures.get('loss', 'nan')):.4f}  "
              f"max |w - w_accelerate| {gap:.2e}")
    print(f"projects: {folder}")


if __name__ == "__main__":
    main()
