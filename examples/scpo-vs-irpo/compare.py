"""ScPO (no labels) vs IRPO (gold answers) vs ScPO semi-supervised, from the same base model, in miniature.

    python examples/scpo-vs-irpo/compare.py                 # seed 0: about 15 minutes on 2 cores
    python examples/scpo-vs-irpo/compare.py --seed 1        # another task seed and held-out set
    python examples/scpo-vs-irpo/compare.py --validation    # choose settings here, never on the test split

Each seed gets its own DVC project under examples/scpo-vs-irpo/runs/seed<S>/ (so reruns are cached
and an interrupted comparison resumes), in which the three loops of loops/ run from one bootstrapped
base model with the same sampling budget (8 samples per question) and the same number of iterations.
Writes results-seed<S>.md (accuracy per iteration with 95% Wilson intervals on the held-out problems,
pairs kept, how often the vote agreed with the gold answer) and accuracy-seed<S>.png.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
from selfimprove.results import wilson  # noqa: E402  (the repository's package, installed or not)
METHODS = [  # (label, loop file, run name)
    ("ScPO (no labels)", "loops/scpo.yaml", "scpo"),
    ("IRPO (gold)", "loops/irpo.yaml", "irpo"),
    ("ScPO semi-supervised", "loops/scpo_semi.yaml", "scpo-semi"),
]
# Same sampling compute: every method samples 8 answers per question. IRPO keeps its paper's K = 10
# pairs per question, so it trains on 4-6x more pairs; overrides per method go here, e.g.
# {"irpo": ["pairs.pairs_per_question=1"]} for one pair per question like ScPO.
PER_METHOD: dict[str, list[str]] = {}


def run_loops(project: Path, seed: int, iterations: int, overrides: list[str]) -> None:
    project.mkdir(parents=True, exist_ok=True)
    for label, loop, run in METHODS:
        print(f"== {label}: {loop} (seed {seed})", flush=True)
        command = [sys.executable, "-m", "selfimprove.cli", "run", str(ROOT / loop), f"--set=iterations={iterations}",
                   f"--set=data.seed={seed}", f"--set=bootstrap.seed={seed}", *(f"--set={o}" for o in overrides + PER_METHOD.get(run, []))]
        subprocess.run(command, cwd=project, check=True)


def collect(project: Path) -> dict[str, dict[int, dict]]:
    from selfimprove.results import iteration_metrics

    return {run: iteration_metrics(project, run) for _, _, run in METHODS}


def table(metrics: dict[str, dict[int, dict]], seed: int) -> str:
    base = metrics["scpo"][0]
    lines = [f"Seed {seed}: greedy accuracy on {base['problems']} held-out problems, 95% Wilson interval. "
             f"Base model maj@{base['k']} {base['maj_at_k']:.1%}, greedy {base['accuracy']:.1%} "
             f"(maj@k minus greedy: {100 * (base['maj_at_k'] - base['accuracy']):+.1f} points).", "",
             "| iteration | " + " | ".join(label for label, _, _ in METHODS) + " |",
             "|---" * (len(METHODS) + 1) + "|"]
    for k in sorted(metrics["scpo"]):
        cells = []
        for _, _, run in METHODS:
            m = metrics[run].get(k)
            if not m:
                cells.append("-")
                continue
            low, high = wilson(m["greedy_correct"], m["problems"])
            cell = f"{m['accuracy']:.1%} [{low:.1%}, {high:.1%}]"
            if k > 0:
                agree = f"{m['majority_correct'] / m['labelled_prompts']:.0%}" if m.get("labelled_prompts") else "-"
                cell += f"; {m['pairs']} pairs, vote right {agree}"
            cells.append(cell)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    last = max(metrics["scpo"])
    gains = {run: metrics[run][last]["accuracy"] - base["accuracy"] for _, _, run in METHODS}
    best_irpo = max(m["accuracy"] for m in metrics["irpo"].values()) - base["accuracy"]
    if gains["irpo"] > 0:
        lines += ["", f"ScPO without labels closes {gains['scpo'] / gains['irpo']:.0%} of the gain IRPO gets with "
                      f"gold answers at iteration {last} ({100 * gains['scpo']:+.1f} vs {100 * gains['irpo']:+.1f} "
                      f"points), and {gains['scpo'] / best_irpo:.0%} of IRPO's best iteration ({100 * best_irpo:+.1f})."]
    drops = [f"{label} at iteration {k}" for label, _, run in METHODS for k in sorted(metrics[run]) if k > 0
             and k - 1 in metrics[run] and _falls(metrics[run][k - 1], metrics[run][k])]
    lines += ["", "Iterations that fall below the one before by more than its 95% interval: "
                  + (", ".join(drops) if drops else "none") + "."]
    lines += ["", "\"vote right\": share of the iteration's training questions whose majority answer equals the gold "
                  "answer (gold answers are read for this statistic only, except by IRPO and the labelled share of "
                  "semi-supervised ScPO)."]
    return "\n".join(lines) + "\n"


def _falls(before: dict, after: dict) -> bool:
    low, _ = wilson(before["greedy_correct"], before["problems"])
    return after["accuracy"] < low


def plot(metrics: dict[str, dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for label, _, run in METHODS:
        ks = sorted(metrics[run])
        accuracy = [metrics[run][k]["accuracy"] for k in ks]
        bounds = [wilson(metrics[run][k]["greedy_correct"], metrics[run][k]["problems"]) for k in ks]
        axes.errorbar(ks, accuracy, yerr=[[a - lo for a, (lo, _) in zip(accuracy, bounds)],
                                          [hi - a for a, (_, hi) in zip(accuracy, bounds)]],
                      marker="o", capsize=3, label=label)
    axes.set_xlabel("iteration (0 = base model)")
    axes.set_ylabel("greedy accuracy (held out)")
    axes.set_xticks(sorted(metrics["scpo"]))
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the task generator, the held-out set and the base model")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--validation", action="store_true", help="evaluate on the validation split (for tuning)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the table and plot from finished runs")
    parser.add_argument("--project", type=Path, help="where the runs live (default: runs/seed<S> beside this file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every loop, e.g. --set train.lr=5e-5")
    args = parser.parse_args()
    overrides = args.overrides + (["data.eval=builtin:arith/validation"] if args.validation else [])
    tag = f"seed{args.seed}" + ("-validation" if args.validation else "")
    project = args.project or HERE / "runs" / tag
    if not args.report_only:
        run_loops(project, args.seed, args.iterations, overrides)
    metrics = collect(project)
    report = table(metrics, args.seed)
    (HERE / f"results-{tag}.md").write_text(report)
    plot(metrics, HERE / f"accuracy-{tag}.png")
    print(report)


if __name__ == "__main__":
    main()
