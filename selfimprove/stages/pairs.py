"""Build preference pairs from a scorer's records with the loop's pair rule (selfimprove.scoring.rules): votes
(ScPO's vote rule, IRPO's gold rule, the semi-supervised mix) or scores (Self-Rewarding's best vs worst,
TPO's length-controlled score, Meta-Rewarding's band). Meta-Rewarding's judge pairs, where the
iteration's pipeline has a metajudge stage, are trained on with the actor pairs.

    python -m selfimprove.stages.pairs --params params.yaml --run scpo --iteration 1 \
        --scored runs/scpo/it1/votes.jsonl --out runs/scpo/it1/pairs.jsonl --stats runs/scpo/it1/pairs.json
"""

from __future__ import annotations

import random

from selfimprove.core.registry import PAIR_RULES, resolve
from selfimprove.scoring.alarms import alarm_figures
from selfimprove.scoring.rules import needs, rule_of
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import iteration_stage_parser, read_jsonl, read_section, stage_main, write_json, write_jsonl


def build_pairs(records: list[dict], settings: dict, seed: int = 0) -> tuple[list[dict], dict]:
    """(pairs, statistics) of the rule settings["rule"] on the scorer's records."""
    return rule_of({"pairs": settings})(records, settings, random.Random(seed))


def main(argv=None) -> None:
    parser = iteration_stage_parser(__doc__, "scored", "out", "stats")
    parser.add_argument("--judge-pairs", action="append", default=[],
                        help="Meta-Rewarding's judge pairs (from the metajudge stage), trained on with the actor pairs")
    args = parser.parse_args(argv)
    settings = read_section(args.params, f"{args.run}.it{args.iteration}.pairs")
    records = read_jsonl(args.scored)
    pairs, stats = build_pairs(records, settings, seed=settings["seed"] * 1000 + args.iteration)
    stats.update(alarm_figures(records, pairs))  # of the policy's own samples and pairs, before the judge's
    extra = [pair for path in args.judge_pairs for pair in read_jsonl(path)]
    pairs += extra
    stats["actor_pairs"], stats["pairs"] = stats["pairs"], stats["pairs"] + len(extra)
    write_jsonl(args.out, pairs)
    write_json(args.stats, stats)
    dropped = ", ".join(f"{stats[key]} {key.removeprefix('dropped_').replace('_', ' ')}" for key in stats
                        if key.startswith("dropped_"))
    print(f"pairs: {stats['pairs']} from {stats['prompts']} prompts" + (f" ({dropped})" if dropped else ""))


SETTINGS = {
    "rule": Setting(str, "most_vs_least_voted", "how pairs are made: a rule of selfimprove.core.registry.PAIR_RULES "
                    "(most_vs_least_voted is ScPO, gold IRPO, best_vs_worst Self-Rewarding)", choices=tuple(PAIR_RULES)),
    "min_votes": Setting(float, 0.5, "tau as a fraction of n: keep a prompt if its top answer has >= tau*n votes",
                         check=lambda v: 0 <= v <= 1, fix="is a fraction of n; use a value in [0, 1], e.g. 0.5"),
    "weight": Setting(str, "vote_margin", "the vote rules' pair weight: vote_margin (ScPO) or none (1)",
                      choices=("vote_margin", "none")),
    "pairs_per_question": Setting(int, 10, "K for the gold rule (IRPO: 10 on GSM8K)", check=lambda v: v >= 1,
                                  fix="must be >= 1"),
    "labelled_fraction": Setting(float, 0.5, "semi_supervised: share of questions whose gold answer is used",
                                 check=lambda v: 0 <= v <= 1, fix="is a fraction of the questions; use a value in [0, 1]"),
    "rho": Setting(float, 0.0, "length control of the score rules (TPO, Meta-Rewarding); 0 = off",
                   check=lambda v: 0 <= v <= 1, fix="is a length-control weight; use a value in [0, 1] (0: off)"),
    "judge_pairs": Setting(bool, False, "Meta-Rewarding in a loop without pipeline: add the metajudge stage and "
                           "train on its judge pairs"),
    "seed": Setting(int, 0, "seed of the rules' random choices"),
    # and every pair rule's own settings (a rule function's `settings`), e.g. DivPO's diversity
    **{key: setting for rule in PAIR_RULES for key, setting in getattr(resolve("pair rule", rule), "settings", {}).items()},
}


@declaration
def node(ctx: Context) -> dict:
    scored, judge_pairs = ctx.inputs[needs(ctx.settings)], ctx.inputs.get("judge_pairs")
    out = ctx.outputs
    cmd = ctx.command(STAGE, scored=scored, out=out["pairs"], stats=out["pairs_stats"])
    return ctx.node(STAGE, cmd=cmd + (f" --judge-pairs {judge_pairs}" if judge_pairs else ""),
                    deps=[scored] + ([judge_pairs] if judge_pairs else []), params=[ctx.section("pairs")],
                    outs=[out["pairs"]], metrics=[out["pairs_stats"]])


STAGE = Stage("pairs", SETTINGS, node=node, reads=lambda settings: (needs(settings),), optional_reads=("judge_pairs",),
              writes={"pairs": "pairs.jsonl", "pairs_stats": "pairs.json"},
              plugins=lambda ctx: [("pair rule", ctx.settings["pairs"]["rule"])],
              metrics=(Stage.Metric("pairs", order=200, help="training pairs the rule built"),
                       # role "dropped": a reason the training set lost prompts, said when it ends empty
                       # (selfimprove.pipeline.empty); a help ending in (stage.setting) names what to change
                       Stage.Metric("dropped_below_tau", order=210, role="dropped",
                                    help="prompts whose top answer has under tau votes (pairs.min_votes)"),
                       Stage.Metric("dropped_ties", order=220, role="dropped",
                                    help="prompts whose best and worst score tie"),
                       Stage.Metric("mean_weight", order=230, help="mean pair weight (the vote margin)"),
                       Stage.Metric("chosen_correct", "higher", order=240, help="chosen responses that are right"),
                       Stage.Metric("rejected_correct", "lower", order=250,
                                    help="rejected responses that are right"),
                       Stage.Metric("dropped_below_min_score", role="dropped",
                                    help="prompts whose best score is under the floor (pairs.min_score)"),
                       Stage.Metric("dropped_small_margin", role="dropped",
                                    help="pairs whose scores are closer than the margin (pairs.min_margin)"),
                       Stage.Metric("dropped_no_majority", role="dropped",
                                    help="prompts without a majority answer (pairs.min_votes)"),
                       Stage.Metric("dropped_*", role="dropped", help=""),  # the rules' other reasons
                       Stage.Metric("*_pairs", help="pairs of one kind a rule built (gold_pairs, actor_pairs)"),
                       Stage.Metric("labelled_prompts", help="prompts with a gold answer (semi_supervised)"),
                       Stage.Metric("majority_correct", "higher", help="prompts whose majority answer is right"),
                       Stage.Metric("rejected_from_extra", help="rejected responses drawn from extra samples"),
                       # reward-hacking and drift alarms (selfimprove.scoring.alarms)
                       Stage.Metric("alarm_length_gap", order=260,
                                    help="chosen minus rejected length, characters (a length preference)"),
                       Stage.Metric("alarm_chosen_longer", order=270, help="pairs whose chosen is the longer"),
                       Stage.Metric("alarm_score_length_corr", order=280,
                                    help="correlation of a sample's score with its length, within prompts"),
                       Stage.Metric("alarm_sample_length", order=290,
                                    help="mean sampled response length, characters"),
                       Stage.Metric("alarm_repeat_rate", order=300,
                                    help="samples repeating another sample of their prompt")))


if __name__ == "__main__":
    stage_main(main)
