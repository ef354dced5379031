"""A small finished run for the report's tests, made in seconds without a model: the default loop
(loops/scpo.yaml) compiled into a project by the real compiler, each iteration's files at the paths its
nodes declare (samples written here in the generate stage's shape; votes and pairs by the real vote and
pairs stage functions; DVCLive's files as it writes them, params.yaml with an empty list and nulls
included), then the run's report node's own command line, run in-process.

    root = make_run(tmp_path)           # runs/scpo/{metrics.json, curves.json, report.html, it0..it2/}
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RUN = "scpo"
# A completion that would end the page's <script> early and run its own, were the records not escaped.
HOSTILE = " </script><script>window.injected = true</script> #### 7"


def make_run(root: Path, iterations: int = 2, prompts: int = 6, n: int = 4) -> Path:
    from selfimprove.loop.loopfile import load_loop
    from selfimprove.pipeline import compiler
    from selfimprove.stages import report
    from selfimprove.stages._io import read_section, write_json, write_jsonl
    from selfimprove.stages.pairs import build_pairs
    from selfimprove.stages.vote import vote

    (root / "loops").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "loops" / "scpo.yaml", root / "loops" / "scpo.yaml")
    loop = load_loop(root / "loops" / "scpo.yaml", [f"iterations={iterations}"])
    compiler.write(root, loop)
    base = root / "runs" / RUN
    for k in range(iterations + 1):
        it = base / f"it{k}"
        it.mkdir(parents=True, exist_ok=True)
        accuracy = round(0.2 + 0.3 * k, 3)
        write_json(it / "metrics.json", {"accuracy": accuracy, "maj_at_k": min(1.0, accuracy + 0.1), "problems": 50,
                                         "greedy_correct": round(accuracy * 50), "k": n, "mean_length": 10.0 + k})
        if k == 0:
            continue
        samples = [{"id": i, "prompt": f"{i}+{k}=", "question": f"{i}+{k}=", "gold": str(i + k), "solution": None,
                    "sample": j, "extra": False, "completion": _completion(i, k, j)}
                   for i in range(prompts) for j in range(n)]
        write_jsonl(it / "samples.jsonl", samples)
        write_json(it / "generate.json", {"generate_prompts": prompts, "generate_samples": len(samples),
                                          "generate_seconds": 1.25 * k})
        votes = vote(samples)
        write_jsonl(it / "votes.jsonl", votes)
        pairs, stats = build_pairs(votes, read_section(str(root / "params.yaml"), f"{RUN}.it{k}.pairs"))
        write_jsonl(it / "pairs.jsonl", pairs)
        write_json(it / "pairs.json", stats)
        _training_curves(it / "train_curves", k)
    node = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][f"{RUN}-report"]
    with contextlib.chdir(root):
        report.main(shlex.split(node["cmd"])[3:])
    return root


def _completion(i: int, k: int, j: int) -> str:
    """Most samples agree on the right answer, one in four is wrong (a pair), except on prompt 2, where all
    agree (nothing to reject: no pair); prompt 1's wrong one is the hostile text."""
    if i == 1 and j == 0:
        return HOSTILE
    return f" #### {i + k}" if j % 4 or i == 2 else f" #### {i + k + 1}"


def _training_curves(directory: Path, k: int) -> None:
    """DVCLive's files for a 3-step training run, as its DVCLiveCallback writes them (plots/metrics/*.tsv,
    metrics.json, and params.yaml with the TrainingArguments, which hold empty lists and nulls)."""
    metrics = directory / "plots" / "metrics"
    (metrics / "train").mkdir(parents=True, exist_ok=True)
    series = {"loss": [0.7, 0.5 / k, 0.3 / k], "train/loss": [0.6], "learning_rate": [1e-4, 5e-5, 1e-5]}
    for name, values in series.items():
        rows = "".join(f"{step}\t{value}\n" for step, value in enumerate(values))
        (metrics / f"{name}.tsv").write_text(f"step\t{Path(name).name}\n{rows}")
    (directory / "metrics.json").write_text(json.dumps({"loss": 0.3, "step": 2, "train": {"runtime": 0.5 * k}}))
    (directory / "params.yaml").write_text(yaml.safe_dump({"learning_rate": 1e-4, "report_to": [],
                                                           "lr_scheduler_kwargs": None}))


def counts(root: Path, k: int) -> dict:
    """{prompts, samples, pairs} of iteration k, counted from its files (not through the report's code)."""
    it = root / "runs" / RUN / f"it{k}"
    samples = [json.loads(line) for line in (it / "samples.jsonl").read_text().splitlines() if line.strip()]
    pairs = [line for line in (it / "pairs.jsonl").read_text().splitlines() if line.strip()]
    return {"prompts": len({s["id"] for s in samples}), "samples": len(samples), "pairs": len(pairs)}


def environment() -> dict:
    """The environment for DVC in a test project: no analytics, no site cache outside it."""
    return dict(os.environ, DVC_NO_ANALYTICS="1")
