"""What an IRPO run trained on, iteration by iteration: how many questions still had an incorrect sample,
how many pairs the K cycled pairs per question made of them, and what kind of mistake the rejected
responses are. Reads a finished run's pairs; computes nothing new.

    python examples/scpo-vs-irpo/irpo_pairs.py PROJECT RUN      # e.g. examples/scpo-vs-irpo/runs/seed0 irpo
    python examples/scpo-vs-irpo/irpo_pairs.py --greedy MODEL   # an iteration's greedy answers on 1,000
                                                                # validation problems, by the same kinds

Kinds of rejected response (the embedded task's formats, selfimprove.tasks.tinyarith):
- direct:           a guessed sum (` #### 785`), no steps;
- wrong step:       worked steps with a mistake in some column, whose final answer copies the running
                    result the steps reached (the tail is right given the steps);
- wrong copy:       worked steps that reach the right sum, then a final answer that differs from it;
- other:            anything else (cut short, no answer).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

RUNNING = re.compile(r" r(\d+)(?:;|$)")


def kind(question: str, response: str) -> str:
    a, b = map(int, question.rstrip("=").split("+")[-2:])
    if " r" not in response:
        return "direct" if "####" in response else "other"
    running = RUNNING.findall(response.split("####")[0])
    answer = response.split("####")[-1].strip() if "####" in response else None
    if not running or answer is None:
        return "other"
    if running[-1] == str(a + b):
        return "wrong copy" if answer != running[-1] else "other"
    return "wrong step" if answer == running[-1] else "other"


def iteration_figures(pairs_file: Path) -> dict:
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines() if line.strip()]
    kinds = Counter(kind(p["prompt"], p["rejected"]) for p in pairs)
    questions = len({p["id"] for p in pairs})
    return {"pairs": len(pairs), "questions": questions, "per_question": len(pairs) / questions if questions else 0.0,
            "distinct_rejected": len({(p["id"], p["rejected"]) for p in pairs}),
            **{f"rejected {k}": kinds[k] / len(pairs) if pairs else 0.0 for k in ("direct", "wrong step", "wrong copy", "other")}}


def main(project: Path, run: str) -> None:
    iterations = sorted(int(d.name[2:]) for d in (project / "runs" / run).glob("it*") if (d / "pairs.jsonl").exists())
    rows = {k: iteration_figures(project / "runs" / run / f"it{k}" / "pairs.jsonl") for k in iterations}
    columns = list(next(iter(rows.values())))
    print("| iteration | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for k, figures in rows.items():
        cells = [f"{v:.0%}" if c.startswith("rejected") else f"{v:.1f}" if isinstance(v, float) else str(v)
                 for c, v in figures.items()]
        print(f"| {k} | " + " | ".join(cells) + " |")


def greedy_kinds(model: str, count: int = 1000) -> Counter:
    """What a model's greedy answers to validation problems are: right, or which kind of mistake."""
    from selfimprove.tasks import tinyarith
    from selfimprove.backends.hf import HFBackend

    records = tinyarith.problems(seed=0, count=count, digits=3, split="validation")
    prompts = [r["question"] for r in records]
    say = lambda done: print(f"  {model}: greedy {done}/{len(prompts)}", file=sys.stderr, flush=True)  # noqa: E731
    answers = [texts[0] for texts in HFBackend(model).sample(prompts, 1, 0.0, 1.0, 56, 256, seed=0, on_batch=say)]
    return Counter("right" if a.split("####")[-1].strip() == r["answer"] else kind(p, a)
                   for p, a, r in zip(prompts, answers, records))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--greedy":
        print(dict(greedy_kinds(sys.argv[2])))
        sys.exit()
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[4].strip())
    main(Path(sys.argv[1]), sys.argv[2])
