"""Evaluate a model as a pairwise judge on a labelled pair set: a JSONL of prompt, chosen, rejected
(RewardBench's shape). Each pair is judged in both orders; a judgement is right when its verdict names
the chosen response. Reported: the greedy verdict's accuracy, the accuracy of the majority over k
sampled verdicts (the paper's inference), position consistency, parse failures.

    python -m selfimprove.stages.judge_eval --params params.yaml --run ste --iteration 1 \
        --model runs/ste/it1/model --out runs/ste/it1/pairwise.json

The prompt, the view of the responses, the verdict pattern and the judgement length are the pairjudge
stage's (the judge is evaluated in the format it is trained on) unless set here.
"""

from __future__ import annotations

from pathlib import Path

from selfimprove.core import templates
from selfimprove.scoring import judging, pairfile, pairwise
from selfimprove.backends import open_backend
from selfimprove.stages.progress import Progress
from selfimprove.stages.shards import scratch_dir
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import iteration_stage_parser, read_section, revision_for, stage_main, write_json

SHARED = ("template", "prompt_template", "response_marker", "verdict_pattern", "prefill", "max_new_tokens")


def read_pairs(path: str, size: int) -> list[dict]:
    return pairfile.read_pairs(path, size, "judge_eval.pairs_file")


def view_settings(settings: dict, pairjudge: dict) -> dict:
    """This stage's prompt settings, each taken from pairjudge where left empty here."""
    return {key: settings[key] if settings[key] not in ("", 0) else pairjudge[key] for key in SHARED}


def judge_pairs(backend, pairs: list[dict], settings: dict, view: dict) -> dict:
    template = pairwise.wrap(templates.load(view["template"], pairwise.PAIRWISE_PLACEHOLDERS),
                             view["prompt_template"])
    orders = []
    for pair in pairs:
        chosen, rejected = (pairwise.view(pair[f], view["response_marker"]) for f in ("chosen", "rejected"))
        orders += pairwise.both_orders(pair["prompt"], chosen or "", rejected or "", template)
    prompts = [o["prompt"] + view["prefill"] for o in orders]
    k = settings["k"]
    progress = Progress("judge_eval", len(prompts) * (1 + k), "judgements")
    greedy = backend.sample(prompts, 1, 0.0, 1.0, view["max_new_tokens"], settings["batch_size"], settings["seed"],
                            on_batch=progress.update)
    sampled = backend.sample(prompts, k, settings["temperature"], settings["top_p"], view["max_new_tokens"],
                             settings["batch_size"], settings["seed"],
                             on_batch=lambda done: progress.update(len(prompts) + done * k)) if k else None
    if view["prefill"]:  # the verdict may sit in the prefill's end ("[[" + "A]]")
        greedy, sampled = ([[view["prefill"] + t for t in texts] for texts in found] if found else None
                           for found in (greedy, sampled))
    return pairwise_metrics(orders, greedy, sampled, view["verdict_pattern"])


def pairwise_metrics(orders: list[dict], greedy: list[list[str]], sampled: list[list[str]] | None,
                     pattern: str) -> dict:
    """Accuracy over the judged orders (two per pair, adjacent) of the greedy verdict and of the majority of
    the sampled ones; no verdict, or a tied majority, counts as wrong."""
    verdicts = [judging.parse_verdict(t[0], pattern) for t in greedy]
    right = [v == o["label"] for v, o in zip(verdicts, orders)]
    figures = {"pairwise_pairs": len(orders) // 2, "pairwise_judgements": len(orders),
               "pairwise_accuracy": sum(right) / len(orders),
               "pairwise_both_orders_right": sum(right[i] and right[i + 1] for i in range(0, len(right), 2)) / (len(orders) // 2),
               "pairwise_parse_failure_rate": sum(v is None for v in verdicts) / len(orders)}
    checks = [pairwise.consistent(verdicts[i], verdicts[i + 1]) for i in range(0, len(verdicts), 2)]
    checked = [c for c in checks if c is not None]
    figures["pairwise_position_consistency"] = sum(checked) / len(checked) if checked else 0.0
    parsed = [v for v in verdicts if v is not None]
    figures["pairwise_first_position_rate"] = parsed.count("A") / len(parsed) if parsed else 0.0
    if sampled is not None:
        votes = [[judging.parse_verdict(t, pattern) for t in texts] for texts in sampled]
        figures["pairwise_maj_accuracy"] = sum(pairwise.majority(v) == o["label"] for v, o in zip(votes, orders)) / len(orders)
        figures["pairwise_sample_accuracy"] = (sum(x == o["label"] for v, o in zip(votes, orders) for x in v)
                                               / sum(map(len, votes)))
        figures["pairwise_k"] = len(sampled[0]) if sampled else 0
    return figures


def main(argv=None) -> None:
    args = iteration_stage_parser(__doc__, "model", "out").parse_args(argv)
    run = read_section(args.params, args.run)
    stages = run[f"it{args.iteration}"]
    settings = stages["judge_eval"]
    view = view_settings(settings, stages.get("pairjudge") or _pairjudge_defaults())
    pairs = read_pairs(settings["pairs_file"], settings["size"])
    revision = revision_for(run, args.model)
    backend = open_backend(run, args.model, revision, scratch=scratch_dir(args.out))
    figures = judge_pairs(backend, pairs, settings, view)
    backend.close()
    write_json(args.out, figures)
    print(f"judge_eval: pairwise accuracy {figures['pairwise_accuracy']:.3f}"
          + (f", majority of {settings['k']} {figures['pairwise_maj_accuracy']:.3f}" if settings["k"] else "")
          + f", position consistency {figures['pairwise_position_consistency']:.3f} on {figures['pairwise_pairs']} pairs")


def _pairjudge_defaults() -> dict:
    from selfimprove.core.registry import stage_defaults

    return stage_defaults("pairjudge")


SETTINGS = {
    "pairs_file": Setting(str, "", "the labelled pairs: a JSONL of prompt, chosen, rejected (RewardBench's shape)",
                          file=True, check=lambda v: not v or Path(v).is_file(),
                          fix="is not a file: give the path, from the project root, of a JSONL of prompt, chosen, rejected",
                          reads=Setting.Reads("pairs")),
    "size": Setting(int, 0, "pairs evaluated, from the top of the file (0: all)", check=lambda v: v >= 0,
                    fix="must be >= 0 (0: all)"),
    "k": Setting(int, 8, "sampled verdicts per order for the majority vote (the paper: 32; 0: greedy only)",
                 check=lambda v: v >= 0, fix="must be >= 0 (0: greedy only)"),
    "temperature": Setting(float, 0.7, "temperature of the sampled verdicts"),
    "top_p": Setting(float, 0.9, "nucleus sampling mass of the sampled verdicts"),
    "template": Setting(str, "", "the comparison prompt: eval-plan, tiny-arith-pairwise or a text file; '' = "
                        "pairjudge's", file=True, resolve_file=templates.path,
                        check=lambda v: not v or templates.exists(v),
                        fix="is not a template: use '' (pairjudge's), eval-plan, tiny-arith-pairwise or a path to a text file",
                        reads=Setting.Reads("template", pairwise.PAIRWISE_PLACEHOLDERS)),
    "prompt_template": Setting(str, "", "wraps the comparison prompt; '' = pairjudge's",
                               check=lambda v: not v or "{question}" in v, fix="must contain {question} (or be '')"),
    "response_marker": Setting(str, "", "the judge sees each response after this marker; '' = pairjudge's"),
    "verdict_pattern": Setting(str, "", "the verdict's regular expression; '' = pairjudge's"),
    "prefill": Setting(str, "", "text the judgement starts with; '' = pairjudge's"),
    "max_new_tokens": Setting(int, 0, "longest judgement, in tokens; 0 = pairjudge's", check=lambda v: v >= 0,
                              fix="must be >= 0 (0: pairjudge's)"),
    "batch_size": Setting.count(512, "sequences per forward pass"),
    "seed": Setting(int, 1234, "sampling seed"),
}


@declaration
def files(ctx: Context) -> list[tuple[str, str]]:
    """The pair set, and the comparison prompt: this stage's, or pairjudge's where left empty."""
    own = ctx.settings["judge_eval"]["template"]
    return [("judge_eval", "pairs_file"), ("judge_eval", "template") if own else ("pairjudge", "template")]


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=ctx.policy, out=out["pairwise_stats"]),
                    deps=[ctx.policy] if ctx.policy_is_dep else [],
                    params=[ctx.section("judge_eval")] + ([ctx.section("pairjudge")] if "pairjudge" in ctx.tracked else [])
                    + ctx.revision_keys(ctx.policy) + ctx.backend_keys,
                    metrics=[out["pairwise_stats"]])


@declaration
def check(settings: dict, problems, top: dict) -> None:
    if not settings["judge_eval"]["pairs_file"]:
        problems.add(("stages", "judge_eval", "pairs_file"), "judge_eval needs a labelled pair set: a JSONL of "
                     "prompt, chosen, rejected, e.g. examples/self_taught_evaluator/pairs_validation.jsonl")


STAGE = Stage("judge_eval", SETTINGS, node=node, files=files, check=check, settings_of=("pairjudge",),
              base_iteration=True, writes={"pairwise_stats": "pairwise.json"},
              included=lambda settings: False,  # only where a loop's pipeline names it
              plugins=lambda ctx: [("backend", ctx.backend)],
              # a pair's two orders are not independent: the intervals count pairs, not judgements
              metrics=(Stage.Metric("pairwise_accuracy", "higher", "pairwise_pairs", headline=True, curve=True,
                                    order=40, help="judgements naming the better response, both orders"),
                       Stage.Metric("pairwise_maj_accuracy", "higher", "pairwise_pairs", curve=True, order=50,
                                    help="the majority of k sampled judgements naming the better response"),
                       Stage.Metric("pairwise_position_consistency", "higher", order=100,
                                    help="pairs whose two orders get the same verdict"),
                       Stage.Metric("pairwise_both_orders_right", "higher", "pairwise_pairs",
                                    help="pairs judged right in both orders"),
                       Stage.Metric("pairwise_pairs", help="labelled pairs judged")))


if __name__ == "__main__":
    stage_main(main)
