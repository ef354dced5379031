"""The Adaptive Decoding table of a run: every fixed temperature (iteration 0, the frozen model) against the
head of each later iteration, per prompt kind, with 95% intervals over prompts.

    python examples/adaptive_decoding/table.py [RUN]      # default: adaptive_decoding; run from the project root

An interval is mean +- 1.96 sd / sqrt(prompts), with sd the standard deviation over prompts of each
prompt's mean score (its k samples are correlated, so an interval over samples would be too narrow).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def interval(figures: dict, key: str, prompts: int) -> str:
    mean, sd = figures[key], figures.get(f"{key}_sd", 0.0)
    half = 1.96 * sd / math.sqrt(prompts) if prompts else 0.0
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def rows(run_dir: Path) -> list[tuple[str, dict]]:
    found = []
    for path in sorted(run_dir.glob("it*/decoding.json"), key=lambda p: int(p.parent.name[2:])):
        figures = json.loads(path.read_text())
        names = sorted({key[len("score_"):].split("_")[0] for key in figures if key.startswith("score_t")},
                       key=lambda n: float(n[1:]))
        names += [n for n in ("adaptive", "adaptive_sampled") if f"score_{n}" in figures]
        found += [(f"{path.parent.name} {name}", {"name": name, **figures}) for name in names]
    return found


def kinds(figures: dict) -> list[str]:
    return sorted(key[len("decoding_prompts_"):] for key in figures if key.startswith("decoding_prompts_"))


def table(run_dir: Path) -> str:
    found = rows(run_dir)
    if not found:
        raise SystemExit(f"{run_dir}: no decoding.json yet; run the loop first")
    groups = kinds(found[0][1])
    header = ["decoding", "score (all)"] + [f"score ({k})" for k in groups] + [f"temperature ({k})" for k in groups]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, figures in found:
        name = figures["name"]
        cells = [label, interval(figures, f"score_{name}", figures["decoding_prompts"])]
        cells += [interval(figures, f"score_{name}_{k}", figures[f"decoding_prompts_{k}"]) for k in groups]
        cells += [interval(figures, f"temperature_{name}_{k}", figures[f"decoding_prompts_{k}"])
                  if f"temperature_{name}_{k}" in figures else name[1:] for k in groups]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path("runs") / (sys.argv[1] if len(sys.argv) > 1 else "adaptive_decoding")))
