"""A run's report as one self-contained HTML page: metrics per iteration with their 95% intervals and the
best iteration, charts, the training curves, every figure the stages declare grouped by the stage that
writes it (judge, reward and vote health, pair statistics), what each stage took, the settings each
iteration ran with, and a table of the records, prompt -> samples -> pairs, per iteration and across them.

    page = build(run="scpo", iterations=3, per_iteration={0: {...}, 1: {...}}, section=params["scpo"],
                 inputs=[Path("runs/scpo/it1/samples.jsonl"), Path("runs/scpo/it1/train_curves"), ...],
                 loop_file=Path("loops/scpo.yaml"))

Written by the report stage (runs/RUN/report.html, a DVC output) and by `selfimprove report RUN -o PATH`.
Everything is inline (SVG charts from matplotlib, the records as JSON, a little vanilla JS that shows
them a page at a time): it opens from a file, with no network and no server. Not a stage: the report
stage imports it, and it reads only the paths it is given.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from selfimprove.core import figures, records, registry
from selfimprove.stages import report_charts
from selfimprove.stages._io import read_jsonl

# The template and its parts: package files, and code of the report stage (its fingerprint counts them).
TEMPLATE_DIR = "selfimprove/shipped/report"
TEMPLATE_FILES = ("report.html.j2", "report.css", "report.js")
MAX_TEXT = 4000  # characters of one text in the page (a completion, a judgement); the rest is cut, marked
# What a stage spent, as the stages and their backends name it: <stage>_<suffix> (selfimprove.backends).
COSTS = {"seconds": "seconds", "prompt_tokens": "prompt tokens", "completion_tokens": "completion tokens",
         "requests_sent": "requests sent", "replies_from_cache": "replies from cache", "cost_usd": "cost (USD)"}


def build(run: str, iterations: int, per_iteration: dict[int, dict], section: dict, inputs: list[Path],
          loop_file: Path | None = None) -> str:
    """The page's HTML. inputs: record files (*.jsonl) and DVCLive directories (train_curves), each inside
    its iteration's directory (runs/RUN/itK/...)."""
    columns = list(range(iterations + 1))
    per_iteration = {k: per_iteration.get(k, {}) for k in columns}
    metric, better = figures.headline(section, per_iteration)
    best = figures.best(per_iteration, metric, better)
    curves = [m.name for m in registry.metrics() if m.curve and any(m.name in f for f in per_iteration.values())]
    training = {iteration_of(p): report_charts.training_series(p) for p in inputs if p.is_dir()}
    runtimes = {iteration_of(p): _training_seconds(p) for p in inputs if p.is_dir()}
    joined = {k: records.join(read_jsonl(p) for p in files) for k, files in _record_files(inputs).items()}
    context = {
        "run": run, "columns": columns, "best": best,
        "charts": report_charts.metric_svgs(run, per_iteration, curves, best),
        "training": report_charts.training_svg(run, training),
        "groups": metric_groups(per_iteration, columns, best),
        "costs": cost_rows(per_iteration, columns, runtimes),
        "pairs": pair_rows(joined),
        "counts": {k: records.counts(prompts) for k, prompts in joined.items()},
        "settings": settings(section, columns),
        "loop_file": section.get("loop_file") or (str(loop_file) if loop_file else None),  # as compiled
        "loop_text": loop_file.read_text() if loop_file else None,
        "records_json": records_json(joined),
    }
    return render(context)


def render(context: dict) -> str:
    """The template filled in; autoescaped, so that no text of a record or a setting is read as HTML."""
    import jinja2
    import markupsafe  # jinja2's own dependency

    directory = Path(__file__).resolve().parent.parent.parent / TEMPLATE_DIR
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(directory), autoescape=True,
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # The style and the script go in as they are (never through the template engine, whose {{ }} and {# #}
    # could occur in them); they are the package's own files.
    parts = {name.replace(".", "_"): markupsafe.Markup((directory / name).read_text())
             for name in TEMPLATE_FILES[1:]}
    return environment.get_template(TEMPLATE_FILES[0]).render(**context, **parts)


def iteration_of(path: Path) -> int:
    """K of a path inside runs/RUN/itK/."""
    return int(path.parent.name[2:])


def _record_files(inputs: list[Path]) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    for path in inputs:
        if path.suffix == ".jsonl":
            found.setdefault(iteration_of(path), []).append(path)
    return dict(sorted(found.items()))


def _training_seconds(curves_dir: Path) -> float | None:
    """The trainer's own runtime, from DVCLive's summary (metrics.json: train.runtime), if it wrote one."""
    summary = curves_dir / "metrics.json"
    if not summary.is_file():
        return None
    runtime = (json.loads(summary.read_text()).get("train") or {}).get("runtime")
    return runtime if figures.numeric(runtime) else None


def fmt(value) -> str:
    if not figures.numeric(value):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if value == 0 or 0.001 <= abs(value) < 1e5 else f"{value:.3g}"


def metric_groups(per_iteration: dict[int, dict], columns: list[int], best: dict | None) -> list[dict]:
    """The run's numeric figures grouped by the stage that declares them (evaluation first: the stages
    with a headline or curve figure), then those no stage declares. Each row: its name, help, direction
    and a cell per iteration, a rate with its 95% interval."""
    keys = list(dict.fromkeys(k for f in per_iteration.values() for k, v in f.items() if figures.numeric(v)))
    stages = registry.stages()
    evaluation = [s for s in stages if any(m.headline or m.curve for m in s.metrics)]
    ordered = evaluation + [s for s in stages if s not in evaluation and s.metrics]
    claimed, groups = set(), []
    for stage in ordered:
        rows = []
        for declared in stage.metrics:
            for key in ([declared.name] if not declared.pattern else sorted(keys)):
                if key in keys and key not in claimed and declared.matches(key) and registry.metric(key) is declared:
                    claimed.add(key)
                    rows.append(_row(key, declared, per_iteration, columns, best))
        if rows:
            groups.append({"title": stage.name, "rows": rows})
    rest = [_row(key, None, per_iteration, columns, best) for key in sorted(keys) if key not in claimed]
    if rest:
        groups.append({"title": "not declared by a stage", "rows": rest})
    return groups


def _row(key: str, declared, per_iteration: dict[int, dict], columns: list[int], best: dict | None) -> dict:
    cells = []
    for k in columns:
        value = per_iteration[k].get(key)
        ci = figures.interval(per_iteration[k], key)
        cells.append({"value": fmt(value), "interval": f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "",
                      "best": bool(best and best["metric"] == key and best["iteration"] == k)})
    return {"name": key, "unit": figures.unit(key), "help": declared.help if declared else "",
            "better": (declared.better or "") if declared else "", "cells": cells}


def cost_rows(per_iteration: dict[int, dict], columns: list[int], runtimes: dict[int, float | None]) -> list[dict]:
    """What each stage took per iteration: the <stage>_seconds and usage figures the stages write, and
    the trainer's runtime from DVCLive."""
    rows = []
    for stage in registry.STAGES:
        for suffix, name in COSTS.items():
            key = f"{stage}_{suffix}"
            if any(key in f for f in per_iteration.values()):
                rows.append({"stage": stage, "figure": name,
                             "cells": [fmt(per_iteration[k].get(key)) for k in columns]})
    if any(v is not None for v in runtimes.values()):
        rows.append({"stage": "train", "figure": "seconds (the trainer's runtime)",
                     "cells": [fmt(runtimes.get(k)) for k in columns]})
    return rows


def pair_rows(joined: dict[int, list[dict]]) -> list[dict]:
    """Pair statistics per iteration, from the pair records themselves: how many, how many prompts have
    one, weights, lengths of chosen and rejected, and where they came from."""
    rows = []
    for k, prompts in joined.items():
        pairs = [pair for prompt in prompts for pair in prompt["pairs"]]
        if not pairs:
            continue
        texts = [(p.get("chosen"), p.get("rejected")) for p in pairs]
        lengths = [(len(c), len(r)) for c, r in texts if isinstance(c, str) and isinstance(r, str)]
        weights = [p["weight"] for p in pairs if figures.numeric(p.get("weight"))]
        sources = Counter(str(p.get("source")) for p in pairs if p.get("source") is not None)
        rows.append({"iteration": k, "pairs": len(pairs),
                     "prompts": f"{sum(1 for p in prompts if p['pairs'])} of {len(prompts)}",
                     "weight": fmt(sum(weights) / len(weights)) if weights else "",
                     "chosen": fmt(sum(c for c, _ in lengths) / len(lengths)) if lengths else "",
                     "rejected": fmt(sum(r for _, r in lengths) / len(lengths)) if lengths else "",
                     "longer": fmt(sum(c > r for c, r in lengths) / len(lengths)) if lengths else "",
                     "sources": ", ".join(f"{name} {n}" for name, n in sources.most_common())})
    return rows


def settings(section: dict, columns: list[int]) -> dict:
    """The run's settings: what every iteration shares (YAML), each iteration's own (YAML), and the
    settings whose value differs between iterations, side by side."""
    per_iteration = {k: section.get(f"it{k}") or {} for k in columns}
    flat = {k: _flatten(v) for k, v in per_iteration.items()}
    names = sorted({name for values in flat.values() for name in values})
    missing = object()
    differing = [{"name": name, "cells": ["" if flat[k].get(name, missing) is missing else _short(flat[k][name])
                                          for k in columns]}
                 for name in names if len({json.dumps(flat[k].get(name), sort_keys=True, default=str)
                                           for k in columns if k > 0 and flat[k]}) > 1]
    shared = {key: value for key, value in section.items() if not (key.startswith("it") and key[2:].isdigit())}
    return {"shared": _yaml(shared), "iterations": {k: _yaml(v) for k, v in per_iteration.items() if v},
            "differing": differing}


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        return {key: item for name, inner in value.items() for key, item in _flatten(inner, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): value}


def _short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _yaml(value) -> str:
    return yaml.safe_dump(value, sort_keys=False, width=100, default_flow_style=False)


def records_json(joined: dict[int, list[dict]]) -> str:
    """The records for the page's table, as JSON that is safe inside a <script> element (no "<" at all,
    so no "</script>" can end it early), each text cut at MAX_TEXT characters."""
    prompts = [{"it": k, "id": p["id"], "q": _clip(p["question"]), "gold": _clip(p["gold"]),
                "fields": _clip(p["fields"]), "pairs": _clip(p["pairs"]),
                "samples": [_clip({key: value for key, value in s.items() if key != "sample"}) for s in p["samples"]]}
               for k, prompts in joined.items() for p in prompts]
    data = {"iterations": list(joined), "prompts": prompts}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _clip(value):
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + f" [... {len(value) - MAX_TEXT} more characters]"
    if isinstance(value, list):
        return [_clip(item) for item in value]
    if isinstance(value, dict):
        return {key: _clip(item) for key, item in value.items()}
    return value
