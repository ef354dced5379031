"""LIFT (Yuan et al. 2024, "Following Length Constraints in Instructions"): turn a preference set into
length-instructed pairs, trained on together with the originals.

    python -m selfimprove.stages.lift --params params.yaml --run lift --iteration 1 \
        --pairs runs/lift/it1/pairs.jsonl --out runs/lift/it1/pairs_lift.jsonl --stats runs/lift/it1/lift.json

For each pair (x, y_w, y_l) whose responses differ by at least `min_gap` words:
- if the winner is longer: a limit both satisfy (len(y_w) + slack) keeps the preference; a limit drawn
  between len(y_l) and len(y_w) - 1, which the winner breaks, swaps it (y_l becomes the chosen);
- if the winner is shorter: a limit both satisfy and one drawn between len(y_w) and len(y_l) - 1 both
  keep it.
The limit goes into the prompt with the paper's template. The pairs come from the iteration's pairs
stage or from a JSONL file of prompt, chosen, rejected (`pairs_file`, e.g. a public preference set).
"""

from __future__ import annotations

import random

from selfimprove.scoring.lengths import PAPER_TEMPLATE, instructed, word_count
from selfimprove.scoring.pairfile import read_pairs
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import iteration_stage_parser, read_jsonl, read_section, stage_main, write_json, write_jsonl


def too_close(pair: dict, settings: dict) -> bool:
    return abs(word_count(pair["chosen"]) - word_count(pair["rejected"])) < settings["min_gap"]


def exchanged(pair: dict) -> dict:
    """chosen and rejected exchanged, with every figure that describes one side (chosen_correct and
    rejected_correct, chosen_score and rejected_score, ...), so that the record stays true of its texts."""
    change = {"chosen": pair["rejected"], "rejected": pair["chosen"]}
    for key in pair:
        other = "rejected_" + key.removeprefix("chosen_")
        if key.startswith("chosen_") and other in pair:
            change[key], change[other] = pair[other], pair[key]
    return change


def length_instructed(pair: dict, settings: dict, rng: random.Random) -> list[dict]:
    """LIFT's two length-instructed pairs of one pair, or none when its lengths are too close."""
    if too_close(pair, settings):
        return []
    chosen, rejected = word_count(pair["chosen"]), word_count(pair["rejected"])
    shorter, longer = min(chosen, rejected), max(chosen, rejected)
    loose = longer + settings["slack"]
    tight = rng.randint(shorter, longer - 1)  # the shorter response fits, the longer breaks it
    swapped = exchanged(pair) if chosen > rejected else {}

    def with_limit(limit: int, **change) -> dict:
        prompt = instructed(pair["prompt"], limit, settings["template"], settings["prompt_template"])
        return {**pair, "prompt": prompt, **change, "length_limit": limit, "source": "lift",
                "lift_swapped": bool(change)}

    return [with_limit(loose), with_limit(tight, **swapped)]


def lift(pairs: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    augmented = [new for pair in pairs for new in length_instructed(pair, settings, rng)]
    out = (pairs if settings["include_original"] else []) + augmented
    stats = {"lift_pairs_in": len(pairs), "lift_instructed": len(augmented),
             "lift_dropped_close_lengths": sum(too_close(pair, settings) for pair in pairs),
             "lift_swapped": sum(p["lift_swapped"] for p in augmented), "lift_pairs_out": len(out)}
    return out, stats


def main(argv=None) -> None:
    parser = iteration_stage_parser(__doc__, "out", "stats")
    parser.add_argument("--pairs", help="the iteration's pairs (without it: lift.pairs_file)")
    args = parser.parse_args(argv)
    settings = read_section(args.params, f"{args.run}.it{args.iteration}.lift")
    # the iteration's own pairs were checked by the stage that wrote them; a user's file is read field by field
    pairs = read_jsonl(args.pairs) if args.pairs else read_pairs(settings["pairs_file"], setting="lift.pairs_file")
    out, stats = lift(pairs, settings, random.Random(settings["seed"] * 1000 + args.iteration))
    write_jsonl(args.out, out)
    write_json(args.stats, stats)
    print(f"lift: {stats['lift_instructed']} length-instructed pairs from {stats['lift_pairs_in']} "
          f"({stats['lift_swapped']} swapped), {stats['lift_pairs_out']} in all")


SETTINGS = {
    "template": Setting(str, PAPER_TEMPLATE, "the length instruction; {max_len} is the word limit, {instruction} "
                        "the original instruction", check=lambda v: "{max_len}" in v and "{instruction}" in v,
                        fix="must contain {max_len} and {instruction}"),
    "prompt_template": Setting(str, "{question}", "the format the pairs' prompts are in (data.prompt_template): the "
                               "instruction inside it gets the limit", check=lambda v: "{question}" in v,
                               fix="must contain {question}"),
    "min_gap": Setting(int, 10, "skip a pair whose responses differ by fewer words (the paper: 10)",
                       check=lambda v: v >= 1, fix="must be >= 1 (a limit between the lengths needs a gap)"),
    "slack": Setting(int, 10, "the limit both responses satisfy: the longer one's words plus this (the paper: 10)",
                     check=lambda v: v >= 0, fix="must be >= 0"),
    "include_original": Setting(bool, True, "train on the original pairs too (the union, as the paper's final version)"),
    "pairs_file": Setting(str, "", "a JSONL of prompt, chosen, rejected to lift instead of the iteration's pairs",
                          file=True, reads=Setting.Reads("pairs")),
    "seed": Setting(int, 0, "seed of the sampled limits"),
}


@declaration
def node(ctx: Context) -> dict:
    out, upstream = ctx.outputs, ctx.inputs.get("pairs")
    if ctx.settings["lift"]["pairs_file"]:
        upstream = None  # the file replaces the iteration's pairs (it is a dependency as a file setting)
    cmd = ctx.command(STAGE, out=out["pairs"], stats=out["lift_stats"])
    return ctx.node(STAGE, cmd=cmd + (f" --pairs {upstream}" if upstream else ""),
                    deps=[upstream] if upstream else [], params=[ctx.section("lift")], outs=[out["pairs"]],
                    metrics=[out["lift_stats"]])


@declaration
def check(settings: dict, problems, top: dict) -> None:
    """Something must give lift its pairs: an earlier stage of the pipeline, or a file."""
    from selfimprove.core.registry import resolve

    pipeline = top.get("pipeline") or []
    before = pipeline[:pipeline.index("lift")] if "lift" in pipeline else []
    if settings["lift"]["pairs_file"]:
        return
    if not any("pairs" in resolve("stage", s).writes for s in before):
        problems.add(("stages", "lift", "pairs_file"), "no stage before lift makes pairs: set lift.pairs_file to a "
                     "JSONL of prompt, chosen, rejected, or put pairs before lift in the pipeline")
    elif getattr(resolve("pair rule", settings["pairs"]["rule"]), "makes", "pairs") == "sft":
        problems.add(("stages", "lift"), f"lift needs preference pairs, and the pairs rule {settings['pairs']['rule']} "
                     "makes SFT examples; use a preference rule (most_vs_least_voted, gold, best_vs_worst)")


STAGE = Stage("lift", SETTINGS, node=node, optional_reads=("pairs",), check=check,
              writes={"pairs": "pairs_lift.jsonl", "lift_stats": "lift.json"},
              included=lambda settings: False,  # only where a loop's pipeline names it
              # role "dropped": why its output can end empty (selfimprove.pipeline.empty says it)
              metrics=(Stage.Metric("lift_pairs_out", help="pairs written (the training set)"),
                       Stage.Metric("lift_dropped_close_lengths", role="dropped",
                                    help="pairs whose lengths differ by too few words (lift.min_gap)")))


if __name__ == "__main__":
    stage_main(main)
