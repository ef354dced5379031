"""min_margin: Self-Rewarding's best vs worst response of a prompt, kept only when the scorer separates the
two by at least pairs.min_margin (judge points, or reward units).

A judge or a reward model is noisy near a tie: a pair whose two scores differ by a hair trains the policy
on the scorer's noise as much as on its preference. Raising the margin trades pairs for cleaner ones;
pairs.json says how many were dropped for it. A rejected response the judge could not even split
(TPO's missing response marker) is kept whatever the margin.

    stages: {pairs: {rule: min_margin, min_margin: 2.0}}
"""

from __future__ import annotations

import random

from selfimprove.core.stage import Setting
from selfimprove.scoring.rules.scored import best_vs_worst

SETTINGS = {"min_margin": Setting(float, 1.0, "min_margin rule: the least score gap between chosen and rejected",
                                  check=lambda v: v >= 0, fix="must be >= 0", omit_default=True)}


def min_margin(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    pairs, stats = best_vs_worst(records, settings, rng)
    kept = [p for p in pairs
            if p["rejected_unsplittable"] or p["chosen_score"] - p["rejected_score"] >= settings["min_margin"]]
    lengths = {side: sum(p[f"{side}_length"] for p in kept) / len(kept) if kept else 0.0
               for side in ("chosen", "rejected")}
    labelled = [p for p in kept if p["chosen_correct"] is not None]
    return kept, {**stats, "pairs": len(kept), "dropped_small_margin": len(pairs) - len(kept),
                  "mean_chosen_length": lengths["chosen"], "mean_rejected_length": lengths["rejected"],
                  "chosen_correct": sum(p["chosen_correct"] for p in labelled),
                  "rejected_correct": sum(p["rejected_correct"] for p in labelled)}


min_margin.needs = "scores"
min_margin.settings = SETTINGS
