"""Iterations that trained on nothing: said in one line on `selfimprove run`'s terminal.

When every prompt falls below a rule's bar (ScPO's tau, a best-of-n floor, RIP's percentiles), the
iteration's training set is empty, train runs 0 steps and the next model equals the previous one; only
the stages' log said so. The runner calls `say` after each iteration (or after the run): it finds the
file the iteration's train stage reads in dvc.yaml, and when that file is empty, names why from the
statistics of the stage that wrote it, the figures its stage declares with role "dropped"
(selfimprove.core.stage.Metric), e.g.

    scpo iteration 1: 0 training examples, so the model is unchanged: pairs dropped 128 prompts whose
    top answer has under tau votes (pairs.min_votes: 0.5)

It reads files only (dvc.yaml, params.yaml, the metrics files), so a cached iteration is reported as a
fresh one; the figures themselves (`pairs`, `filter_kept`, ...) are what a stop rule reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from selfimprove.core import registry

SETTING_RE = re.compile(r"\((?P<stage>[a-z_0-9]+)\.(?P<key>[a-z_0-9]+)\)$")  # a help ending in its setting


def say(project: Path, run: str, iterations, said: set[int], console) -> None:
    """Print the line of each empty iteration among `iterations` not said before in this run."""
    for k, line in empty_iterations(project, run, [k for k in iterations if k not in said]).items():
        said.add(k)
        console.print(f"[yellow]{line}[/yellow]", highlight=False, soft_wrap=True)


def empty_iterations(project: Path, run: str, iterations) -> dict[int, str]:
    """{K: the line} for each iteration whose train stage read an empty training set."""
    try:
        nodes = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
        params = (yaml.safe_load((project / "params.yaml").read_text()) or {}).get(run) or {}
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return {}
    found = {}
    for k in iterations:
        train = nodes.get(f"{run}-it{k}-train")
        writers = {out: name for name, node in nodes.items() if name.startswith(f"{run}-it{k}-")
                   for out in node.get("outs", []) if isinstance(out, str)}
        if train is None:
            continue
        reasons = _explain(project, nodes, writers, train, params.get(f"it{k}") or {})
        if reasons is not None:
            found[k] = (f"{run} iteration {k}: 0 training examples, so the model is unchanged"
                        + (f": {'; '.join(reasons)}" if reasons else ""))
    return found


def _explain(project: Path, nodes: dict, writers: dict, reader: dict, settings: dict) -> list[str] | None:
    """None when the training set `reader` reads is not empty (or not made yet); else why it is empty:
    the dropping figures of its writer, or, where it dropped nothing, of the writer of its own input."""
    for dep in reader.get("deps", []):
        path = project / dep
        if dep not in writers or not dep.endswith(".jsonl") or not path.is_file():
            continue
        if path.read_text().strip():
            return None
        name = writers[dep]
        writer = nodes[name]
        stats = _stats(project, writer)
        stage = name.rsplit("-", 1)[-1]
        reasons = [f"{stage} dropped " + ", ".join(_dropped(stats, settings))] if _dropped(stats, settings) else []
        return reasons or _explain(project, nodes, writers, writer, settings) or []
    return None


def _stats(project: Path, node: dict) -> dict:
    figures = {}
    for entry in node.get("metrics", []):
        for path in (entry if isinstance(entry, dict) else {entry: None}):
            try:
                figures.update(json.loads((project / path).read_text()))
            except (OSError, ValueError):
                pass
    return figures


def _dropped(stats: dict, settings: dict) -> list[str]:
    """'128 prompts whose ... (pairs.min_votes: 0.5)' for each figure declared as a reason to drop."""
    found = []
    for key, value in stats.items():
        declared = registry.metric(key)
        if declared is None or declared.role != "dropped" or isinstance(value, bool) or not value:
            continue
        phrase = declared.help or key.removeprefix("dropped_").replace("_", " ")
        if match := SETTING_RE.search(phrase):
            current = (settings.get(match["stage"]) or {}).get(match["key"])
            if current is not None:
                phrase = phrase[:match.start()] + f"({match['stage']}.{match['key']}: {current})"
        found.append(f"{value} {phrase}")
    return found
