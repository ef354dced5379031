"""Self-RIP (Yu et al. 2025, section 3.2): the policy writes new prompts, Self-Instruct style, from kept ones.

    python -m selfimprove.stages.synthesize --params params.yaml --run self-rip --iteration 1 \
        --model runs/builtin/tiny-arith-judge --examples runs/rip/it1/pairs_kept.jsonl \
        --out runs/self-rip/it1/prompts.jsonl --stats runs/self-rip/it1/synthesize.json

Each candidate is one sample of a few-shot prompt made of `fewshot` examples drawn at random from the
examples file (RIP's kept pairs, or any JSONL of prompts), seeded per candidate. Candidates whose
ROUGE-L against an example or an earlier survivor reaches `duplicate_threshold` are dropped
(selfimprove.stages.selfrip). The survivors are the prompts of the generate stage after this one, so the
iteration's judge, pairs and filter stages score and filter them again, as in the paper.
"""

from __future__ import annotations

from selfimprove.backends import open_backend
from selfimprove.core import jsonl
from selfimprove.core.errors import UserError
from selfimprove.stages.selfrip import dedupe, fewshot_prompt, parse_new_prompt, pick_examples
from selfimprove.stages.shards import scratch_dir
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import (iteration_stage_args, read_section, revision_for, stage_main, write_json,
                                    write_jsonl)


def example_prompts(path: str, limit: int | None = None) -> list[str]:
    """The distinct prompts of a JSONL file, in order: a row's `question` (data records, samples) or its
    `prompt` (pairs). Each line is checked (selfimprove.core.jsonl); limit: the first rows only."""
    prompts = []
    for number, row in jsonl.records(path, "synthesize.examples", '{"question": "12+7="}', limit):
        field = "question" if "question" in row else "prompt"
        if field not in row:
            raise UserError(f"{path}:{number}: no question or prompt field; each line needs one (RIP's kept pairs, "
                            "e.g. runs/rip/it1/pairs_kept.jsonl, have prompt)")
        prompts.append(jsonl.text_field(row, field, path, number, (field,)))
    return list(dict.fromkeys(prompts))


def check_examples(value: str, reads, where: str) -> None:
    """validate: the examples file read as the stage reads it, on its first rows."""
    example_prompts(value, limit=2000)


def synthesize(settings: dict, examples: list[str], backend) -> tuple[list[str], dict]:
    """(the new prompts, the statistics of synthesize.json)."""
    seed = settings["seed"]
    prompts = [fewshot_prompt(pick_examples(examples, seed * 100003 + i, settings["fewshot"]))
               for i in range(settings["candidates"])]
    completions = backend.sample(prompts, 1, settings["temperature"], settings["top_p"], settings["max_new_tokens"],
                                 settings["batch_size"], seed)
    parsed = [p for c in completions if (p := parse_new_prompt(c[0]))]
    kept, dropped = dedupe(parsed, examples, settings["duplicate_threshold"])
    return kept, {"synthesize_candidates": len(prompts), "synthesize_unparsed": len(prompts) - len(parsed),
                  "synthesize_duplicates": len(dropped), "synthesize_prompts": len(kept)}


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "examples", "out", "stats")
    run = read_section(args.params, args.run)
    settings = run[f"it{args.iteration}"]["synthesize"]
    backend = open_backend(run, args.model, revision_for(run, args.model), scratch=scratch_dir(args.out))
    prompts, stats = synthesize(settings, example_prompts(args.examples), backend)
    backend.close()
    if not prompts:
        raise UserError(f"synthesize: none of {stats['synthesize_candidates']} candidates is a new prompt "
                        f"({stats['synthesize_unparsed']} empty, {stats['synthesize_duplicates']} near-duplicates); "
                        "raise synthesize.candidates or synthesize.temperature")
    write_jsonl(args.out, [{"id": i, "question": p, "answer": None, "solution": None} for i, p in enumerate(prompts)])
    write_json(args.stats, stats)
    print(f"synthesize: {len(prompts)} new prompts from {stats['synthesize_candidates']} candidates "
          f"({stats['synthesize_duplicates']} near-duplicates, {stats['synthesize_unparsed']} empty)")


@declaration
def _positive(help: str, default) -> Setting:
    return Setting(type(default), default, help, check=lambda v: v > 0, fix="must be > 0")


SETTINGS = {
    "examples": Setting(str, "", "JSONL of prompts to imitate, e.g. RIP's kept pairs runs/rip/it1/pairs_kept.jsonl",
                        file=True, reads=Setting.Reads("examples")),
    "candidates": _positive("candidate prompts written (one sample each)", 512),
    "fewshot": _positive("example prompts shown per candidate; the paper: 8", 8),
    "temperature": Setting(float, 0.8, "sampling temperature; the paper: 0.8", check=lambda v: v >= 0, fix="must be >= 0"),
    "top_p": Setting(float, 0.95, "nucleus sampling mass; the paper: 0.95", check=lambda v: 0 < v <= 1, fix="must be in (0, 1]"),
    "max_new_tokens": _positive("longest candidate, in tokens", 64),
    "duplicate_threshold": Setting(float, 0.7, "drop a candidate whose ROUGE-L with an example or an earlier new prompt "
                                   "reaches this; the paper: 0.7", check=lambda v: 0 < v <= 1, fix="must be in (0, 1]"),
    "batch_size": _positive("sequences per forward pass", 512),
    "seed": Setting(int, 0, "seed of the example draws and the sampling"),
}


@declaration
def check(settings: dict, problems, top: dict) -> None:
    if not settings["synthesize"]["examples"]:
        problems.add(("stages", "synthesize", "examples"), "synthesize needs example prompts: set synthesize.examples "
                     "to a JSONL of prompts, e.g. RIP's kept pairs runs/rip/it1/pairs_kept.jsonl")


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=ctx.policy, examples=ctx.settings["synthesize"]["examples"],
                                           out=out["prompts"], stats=out["synthesize_stats"]),
                    deps=[ctx.policy] if ctx.policy_is_dep else [],
                    params=[ctx.section("synthesize")] + ctx.revision_keys(ctx.policy) + ctx.backend_keys,
                    outs=[out["prompts"]], metrics=[out["synthesize_stats"]])


STAGE = Stage("synthesize", SETTINGS, node=node, writes={"prompts": "prompts.jsonl", "synthesize_stats": "synthesize.json"},
              included=lambda settings: False, check=check,  # only where a loop's pipeline names it
              plugins=lambda ctx: [("backend", ctx.backend), ("module", "selfimprove.stages.selfrip")])


if __name__ == "__main__":
    stage_main(main)
