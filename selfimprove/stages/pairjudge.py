"""Judge synthetic pairs in both orders (Self-Taught Evaluator, Wang et al. 2024): the current judge (the
policy, or a model directory) is shown each contrast pair as A/B and as B/A and samples n judgements
per order, each ending in a verdict. Every judgement is kept with its verdict and the verdict the
construction makes right; the judgement rules (selfimprove.scoring.rules.judgements) turn them into training
data. Health figures go to the stats file: parse failures, agreement with the construction, position
consistency, how often the first position wins. Resumable in shards.

    python -m selfimprove.stages.pairjudge --params params.yaml --run ste --iteration 1 \
        --model runs/builtin/tiny-arith-evaluator --contrast runs/ste/it1/contrast.jsonl \
        --out runs/ste/it1/pair_judgements.jsonl --stats runs/ste/it1/pairjudge.json
"""

from __future__ import annotations

from pathlib import Path

from selfimprove.core import templates
from selfimprove.scoring import judging, pairwise
from selfimprove.backends import open_backend
from selfimprove.core.errors import UserError
from selfimprove.models import model_identity
from selfimprove.stages.shards import discard, fingerprint, run_in_shards, scratch_dir
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import (iteration_stage_args, read_jsonl, read_section, revision_for, stage_main,
                                    write_json, write_jsonl)


def judge_template(settings: dict) -> str:
    return pairwise.wrap(templates.load(settings["template"], pairwise.PAIRWISE_PLACEHOLDERS),
                         settings["prompt_template"])


def order_items(pairs: list[dict], settings: dict) -> list[dict]:
    """Two items per contrast pair whose responses the judge can be shown (both have the marker)."""
    template, marker = judge_template(settings), settings["response_marker"]
    items = []
    for pair in pairs:
        good, bad = pairwise.view(pair["good"], marker), pairwise.view(pair["bad"], marker)
        if good is None or bad is None:
            continue
        for order in pairwise.both_orders(pair["question"], good, bad, template):
            items.append({"id": pair["id"], **order})
    return items


def pair_judge(settings: dict, pairs: list[dict], model_ref: str, out: str | Path, revision: str | None = None,
               backend=None) -> tuple[list[dict], dict]:
    """(judged orders, health figures): every order's n judgements and their verdicts."""
    out = Path(out)
    items = order_items(pairs, settings)
    backend = backend or open_backend({}, model_ref, revision)

    def work(shard: list[dict], index: int, on_done) -> list[dict]:
        prefill = settings["prefill"]
        texts = backend.sample([item["prompt"] + prefill for item in shard], settings["n"], settings["temperature"],
                               settings["top_p"], settings["max_new_tokens"], settings["batch_size"],
                               settings["seed"] * 100003 + index, on_batch=on_done)
        texts = [[prefill + t for t in written] for written in texts]  # the judgement, as trained on
        return [{**item, "judgements": t, "verdicts": [judging.parse_verdict(x, settings["verdict_pattern"]) for x in t]}
                for item, t in zip(shard, texts)]

    key = fingerprint(settings, items, model_identity(model_ref, revision))
    judged, _ = run_in_shards("pairjudge", items, settings["shard_size"], out, key, work, unit="orders")
    backend.close()
    figures = {**pairwise.health(judged, "pairjudge"), "pairjudge_unviewable": len(pairs) - len(items) // 2}
    check_failure_rate(judged, figures, settings)
    write_jsonl(out, judged)
    discard(out)
    return judged, figures


def check_failure_rate(judged: list[dict], figures: dict, settings: dict) -> None:
    """Fail with what the judge wrote when too few judgements end in a verdict."""
    rate = figures["pairjudge_parse_failure_rate"]
    if rate <= settings["max_failure_rate"]:
        return
    failed = next((t for item in judged for t, v in zip(item["judgements"], item["verdicts"]) if v is None), "")
    raise UserError(f"pairjudge: {rate:.0%} of {figures['pairjudge_judgements']} judgements have no verdict matching "
                    f"{settings['verdict_pattern']!r} (limit {settings['max_failure_rate']:.0%}, "
                    f"pairjudge.max_failure_rate); the judge wrote e.g. {failed[-200:]!r}. Fix the template, raise "
                    "pairjudge.max_new_tokens if judgements are cut short, or raise the limit")


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "contrast", "out", "stats")
    run = read_section(args.params, args.run)
    settings = run[f"it{args.iteration}"]["pairjudge"]
    judge = args.model if settings["source"] == "self" else settings["source"]
    revision = revision_for(run, judge)
    backend = open_backend(run, judge, revision, scratch=scratch_dir(args.out))
    _, figures = pair_judge(settings, read_jsonl(args.contrast), judge, args.out, revision, backend)
    write_json(args.stats, figures)
    print(f"pairjudge: {figures['pairjudge_judgements']} judgements of {figures['pairjudge_pairs']} pairs, "
          f"parse failures {figures['pairjudge_parse_failure_rate']:.1%}, agreement with the construction "
          f"{figures['pairjudge_label_agreement']:.3f}, position consistency {figures['pairjudge_position_consistency']:.3f}")


SETTINGS = {
    "source": Setting(str, "self", "who judges: self (the iteration's starting model, as the paper) or a model "
                      "directory / hub id", reads=Setting.Reads("model", not_files=("self",))),
    "template": templates.setting("eval-plan", "eval-plan, tiny-arith-pairwise",
                                          "the comparison prompt: {question} {response_a} {response_b}",
                                  placeholders=pairwise.PAIRWISE_PLACEHOLDERS),
    "prompt_template": Setting(str, "{question}", "wraps the comparison prompt (a chat format)",
                               check=lambda v: "{question}" in v, fix="must contain {question}"),
    "response_marker": Setting(str, "", "the judge sees each response after this marker (\"\" = all of it)"),
    "verdict_pattern": pairwise.verdict_setting(),
    "prefill": Setting(str, "", "text the judgement starts with, written for the judge (e.g. 'My verdict: [[' for a "
                       "model too small to reach a verdict on its own); part of the judgement trained on"),
    "n": Setting.count(4, "judgements sampled per order"),
    "temperature": Setting(float, 0.7, "sampling temperature of the judgements (the paper: 0.7)"),
    "top_p": Setting(float, 0.9, "nucleus sampling mass (the paper: 0.9)"),
    "max_new_tokens": Setting.count(1024, "longest judgement, in tokens"),
    "max_failure_rate": Setting(float, 0.5, "more judgements without a verdict than this fails the stage",
                                check=lambda v: 0 <= v <= 1, fix="is a fraction; use a value in [0, 1]"),
    "batch_size": Setting.count(512, "sequences per forward pass"),
    "shard_size": Setting.count(256, "orders per resumable shard"),
    "seed": Setting(int, 0, "sampling seed"),
}


@declaration
def node(ctx: Context) -> dict:
    source = ctx.settings["pairjudge"]["source"]
    judge, judge_is_dep = (ctx.policy, ctx.policy_is_dep) if source == "self" else (source, Path(ctx.project, source).is_dir())
    out = ctx.outputs
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=ctx.policy, contrast=ctx.inputs["contrast"],
                                           out=out["judgements"], stats=out["pairjudge_stats"]),
                    deps=[ctx.inputs["contrast"]] + ([judge] if judge_is_dep else []),
                    params=[ctx.section("pairjudge")] + ctx.revision_keys(judge) + ctx.backend_keys,
                    outs=[out["judgements"]], metrics=[out["pairjudge_stats"]])


STAGE = Stage("pairjudge", SETTINGS, node=node, reads=("contrast",),
              writes={"judgements": "pair_judgements.jsonl", "pairjudge_stats": "pairjudge.json"},
              included=pairwise.judges_pairs, plugins=lambda ctx: [("backend", ctx.backend)])


if __name__ == "__main__":
    stage_main(main)
