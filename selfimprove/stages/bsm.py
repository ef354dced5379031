"""Branch-Solve-Merge judging as System 2 (Saha et al. 2024), curated for distillation by consistency under
input perturbation (Yu et al. 2024): where a judge's answers cannot be voted on, a pair is kept only when
its verdict survives swapping the two responses.

    python -m selfimprove.stages.bsm --params params.yaml --run bsm --iteration 1 \
        --model runs/builtin/smollm2-135m --out runs/bsm/it1/pairs.jsonl --stats runs/bsm/it1/bsm.json

Per pair and per order (A/B, then swapped): branch (the model lists criteria for the question, one per
line), solve (it evaluates both responses on each criterion), merge (it weighs the evaluations and ends
with a verdict). A pair whose two verdicts name the same response becomes two SFT examples, one per
order: the System 1 judge prompt (bsm.system1_template) straight to the verdict alone
(bsm.answer_format), with no branches, evaluations or merge. The pairs come from the perturb stage's
contrast pairs or from a JSONL of prompt, chosen, rejected (bsm.pairs_file); labels, where a file has
them, are read only for statistics.
"""

from __future__ import annotations

import re
from pathlib import Path

from selfimprove.core import templates
from selfimprove.scoring import judging, pairfile, pairwise
from selfimprove.scoring.pairs import make_pair
from selfimprove.backends import open_backend
from selfimprove.models import model_identity
from selfimprove.stages.shards import discard, fingerprint, run_in_shards, scratch_dir
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import (iteration_stage_parser, read_jsonl, read_section, revision_for, stage_main,
                                    write_json, write_jsonl)

STEPS = {"branch": ("question",), "solve": ("question", "response_a", "response_b", "criterion"),
         "merge": ("question", "response_a", "response_b", "evaluations")}


def step_templates(settings: dict) -> dict[str, str]:
    """Each step's template, checked for its placeholders, in the chat format."""
    return {step: pairwise.wrap(templates.load(settings[f"{step}_template"], placeholders),
                                settings["prompt_template"])
            for step, placeholders in STEPS.items()}


def criteria(text: str, limit: int) -> list[str]:
    """The branch step's criteria: its lines that start with a bullet or a number, at most limit; the
    whole text as one criterion when it lists none."""
    lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines()
             if re.match(r"^\s*(?:[-*•]|\d+[.)])\s*\S", line)]
    return lines[:limit] or ([text.strip()] if text.strip() else [])


def judge_orders(backend, settings: dict, orders: list[dict], seed: int, on_batch=None) -> list[dict]:
    """Branch, solve and merge for every order; each order gets its criteria, evaluations and verdict."""
    templates = step_templates(settings)

    def draw(prompts: list[str], tokens: int, offset: int) -> list[str]:
        return [t[0] for t in backend.sample(prompts, 1, settings["temperature"], settings["top_p"], tokens,
                                             settings["batch_size"], seed + offset)] if prompts else []

    branches = draw([templates["branch"].format(question=o["question"]) for o in orders], settings["max_new_tokens"], 0)
    listed = [criteria(text, settings["branches"]) for text in branches]
    solve_prompts = [templates["solve"].format(question=o["question"], response_a=o["response_a"],
                                               response_b=o["response_b"], criterion=c)
                     for o, cs in zip(orders, listed) for c in cs]
    solved = iter(draw(solve_prompts, settings["max_new_tokens"], 1))
    evaluations = [[next(solved) for _ in cs] for cs in listed]
    merge_prompts = [templates["merge"].format(question=o["question"], response_a=o["response_a"],
                                               response_b=o["response_b"],
                                               evaluations="\n\n".join(f"{c}: {e.strip()}" for c, e in zip(cs, es)))
                     for o, cs, es in zip(orders, listed, evaluations)]
    # The verdict's opening may be written for the model (prefill, e.g. "[["): a small model then only
    # has to name A or B; the merge text keeps it, so the verdict is parsed as written.
    prefill = settings["prefill"]
    merged = [prefill + m for m in draw([p + prefill for p in merge_prompts], settings["max_new_tokens"], 2)]
    if on_batch:
        on_batch(len(orders))
    return [{**o, "criteria": cs, "evaluations": es, "merge": m,
             "verdict": judging.parse_verdict(m, settings["verdict_pattern"])}
            for o, cs, es, m in zip(orders, listed, evaluations, merged)]


def pair_orders(pairs: list[dict]) -> list[dict]:
    """Two orders per pair: (first, second) then swapped, each remembering which response is which."""
    orders = []
    for pair in pairs:
        for swapped in (False, True):
            a, b = (pair["second"], pair["first"]) if swapped else (pair["first"], pair["second"])
            orders.append({"id": pair["id"], "question": pair["question"], "response_a": a, "response_b": b,
                           "swapped": swapped, "label": pair.get("label")})
    return orders


def distilled(judged: list[dict], settings: dict) -> tuple[list[dict], dict]:
    """SFT examples of the pairs whose verdict survives the swap, and the curation's figures."""
    system1 = pairwise.wrap(templates.load(settings["system1_template"], pairwise.PAIRWISE_PLACEHOLDERS),
                            settings["system1_prompt_template"])
    examples, consistent, unparsed, labelled, agree = [], 0, 0, 0, 0
    for first, second in zip(judged[0::2], judged[1::2]):
        if first["verdict"] is None or second["verdict"] is None:
            unparsed += 1
            continue
        if not pairwise.consistent(first["verdict"], second["verdict"]):
            continue
        consistent += 1
        winner = "first" if first["verdict"] == "A" else "second"  # the response both orders pick
        if first["label"] is not None:
            labelled += 1
            agree += winner == first["label"]
        for order in (first, second):
            prompt = system1.format(question=order["question"], response_a=order["response_a"],
                                    response_b=order["response_b"])
            completion = settings["answer_format"].format(verdict=order["verdict"])
            examples.append(make_pair(prompt, completion, id=order["id"], completion=completion, source="bsm"))
    pairs = len(judged) // 2
    figures = {"bsm_pairs": pairs, "bsm_kept": consistent, "bsm_unparsed": unparsed,
               "bsm_consistency": consistent / (pairs - unparsed) if pairs - unparsed else 0.0,
               "bsm_examples": len(examples)}
    if labelled:  # statistics only: how often the kept verdicts agree with a file's labels
        figures["bsm_kept_label_agreement"] = agree / labelled
    return examples, figures


def input_pairs(settings: dict, contrast: str | None) -> list[dict]:
    """(first, second) response pairs: perturb's contrast pairs (good first, as a label for statistics), or
    the file's prompt, chosen, rejected, each line checked."""
    if contrast:
        return [{"id": p["id"], "question": p["question"], "first": p["good"], "second": p["bad"], "label": "first"}
                for p in read_jsonl(contrast)]
    return [{"id": i, "question": row["prompt"], "first": row["chosen"], "second": row["rejected"], "label": "first"}
            for i, row in enumerate(pairfile.read_pairs(settings["pairs_file"], setting="bsm.pairs_file"))]


def bsm(settings: dict, pairs: list[dict], model_ref: str, out: str | Path, revision: str | None = None,
        backend=None) -> tuple[list[dict], dict]:
    out = Path(out)
    backend = backend or open_backend({}, model_ref, revision)
    orders = pair_orders(pairs)

    def work(shard: list[dict], index: int, on_done) -> list[dict]:
        return judge_orders(backend, settings, shard, settings["seed"] * 100003 + index, on_done)

    shard_size = max(2, settings["shard_size"] - settings["shard_size"] % 2)  # a pair's two orders stay together
    key = fingerprint(settings, step_templates(settings), orders, model_identity(model_ref, revision))
    judged, _ = run_in_shards("bsm", orders, shard_size, out, key, work, unit="orders")
    backend.close()
    examples, figures = distilled(judged, settings)
    write_jsonl(out, examples)
    discard(out)
    return examples, figures


def main(argv=None) -> None:
    parser = iteration_stage_parser(__doc__, "model", "out", "stats")
    parser.add_argument("--contrast", help="the perturb stage's contrast pairs (without it: bsm.pairs_file)")
    args = parser.parse_args(argv)
    run = read_section(args.params, args.run)
    settings = run[f"it{args.iteration}"]["bsm"]
    revision = revision_for(run, args.model)
    backend = open_backend(run, args.model, revision, scratch=scratch_dir(args.out))
    _, figures = bsm(settings, input_pairs(settings, args.contrast), args.model, args.out, revision, backend)
    write_json(args.stats, figures)
    print(f"bsm: {figures['bsm_kept']} of {figures['bsm_pairs']} pairs keep their verdict when swapped "
          f"({figures['bsm_unparsed']} without a verdict): {figures['bsm_examples']} SFT examples")


@declaration
def _optional_file(value: str) -> Path | None:
    return Path(value) if value else None


@declaration
def _template(step: str) -> Setting:
    placeholders = ", ".join("{" + p + "}" for p in STEPS[step])
    return Setting(str, f"bsm-{step}", f"the {step} step's template: bsm-{step} (shipped) or a text file "
                   f"({placeholders})", file=True, resolve_file=templates.path, check=templates.exists,
                   fix=f"is not a template: use bsm-{step} or a path to a text file",
                   reads=Setting.Reads("template", STEPS[step]))


SETTINGS = {
    "pairs_file": Setting(str, "", "a JSONL of prompt, chosen, rejected to judge, where no perturb stage comes "
                          "before (labels only for statistics)", file=True, resolve_file=_optional_file,
                          check=lambda v: not v or Path(v).is_file(),
                          fix="is not a file: give the path of a JSONL from the project root",
                          reads=Setting.Reads("pairs")),
    "branch_template": _template("branch"),
    "solve_template": _template("solve"),
    "merge_template": _template("merge"),
    "prompt_template": Setting(str, "{question}", "wraps every step's prompt (a chat format)",
                               check=lambda v: "{question}" in v, fix="must contain {question}"),
    "branches": Setting.count(5, "criteria solved per order, at most"),
    "verdict_pattern": pairwise.verdict_setting(),
    "prefill": Setting(str, "", "text the merge step's verdict starts with, written for the model (e.g. '[[' for a "
                       "small model that never writes the format on its own)"),
    "system1_template": templates.setting("bsm-system1", "bsm-system1, eval-plan", "the distilled judge's "
                                                  "prompt: {question} {response_a} {response_b}",
                                          placeholders=pairwise.PAIRWISE_PLACEHOLDERS),
    "system1_prompt_template": Setting(str, "{question}", "wraps the distilled judge's prompt (a chat format)",
                                       check=lambda v: "{question}" in v, fix="must contain {question}"),
    "answer_format": Setting(str, "[[{verdict}]]", "the distilled target, with {verdict} A or B",
                             check=lambda v: "{verdict}" in v, fix="must contain {verdict}"),
    "temperature": Setting(float, 0.0, "sampling temperature of every step (0: greedy)"),
    "top_p": Setting(float, 1.0, "nucleus sampling mass"),
    "max_new_tokens": Setting.count(256, "longest output of a step, in tokens"),
    "batch_size": Setting.count(64, "sequences per forward pass"),
    "shard_size": Setting(int, 64, "orders per resumable shard (even: a pair's orders stay together)",
                          check=lambda v: v >= 2, fix="must be >= 2"),
    "seed": Setting(int, 0, "sampling seed"),
}


@declaration
def node(ctx: Context) -> dict:
    out, contrast = ctx.outputs, ctx.inputs.get("contrast")
    cmd = ctx.command(STAGE, model=ctx.policy, out=out["pairs"], stats=out["bsm_stats"])
    return ctx.node(STAGE, cmd=cmd + (f" --contrast {contrast}" if contrast else ""),
                    deps=([contrast] if contrast else []) + ([ctx.policy] if ctx.policy_is_dep else []),
                    params=[ctx.section("bsm")] + ctx.revision_keys(ctx.policy) + ctx.backend_keys,
                    outs=[out["pairs"]], metrics=[out["bsm_stats"]])


@declaration
def check(settings: dict, problems, top: dict) -> None:
    pipeline = top.get("pipeline") or []
    before = pipeline[:pipeline.index("bsm")] if "bsm" in pipeline else []
    if not settings["bsm"]["pairs_file"] and "perturb" not in before:
        problems.add(("stages", "bsm", "pairs_file"), "bsm needs pairs to judge: set bsm.pairs_file to a JSONL of "
                     "prompt, chosen, rejected, or put perturb before bsm in the pipeline")
    if "train" in pipeline[pipeline.index("bsm"):] and settings["train"]["loss"] != "sft":
        problems.add(("stages", "train", "loss"), f"{settings['train']['loss']} needs preference pairs, and bsm makes SFT "
                     "examples (a judge prompt and its verdict); set train.loss: sft")


STAGE = Stage("bsm", SETTINGS, node=node, optional_reads=("contrast",), check=check,
              writes={"pairs": "pairs_bsm.jsonl", "bsm_stats": "bsm.json"},
              included=lambda settings: False,  # only where a loop's pipeline names it
              plugins=lambda ctx: [("backend", ctx.backend)])


if __name__ == "__main__":
    stage_main(main)
