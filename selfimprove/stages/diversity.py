"""DivPO's third diversity criterion: an LLM, shown a prompt's pool of responses, names the most and the
least diverse one (Lanchantin et al. 2025). It adds to each scorer record `diversity`: 1 for the most
diverse response, -1 for the least, 0 for the rest, or None throughout when the verdict cannot be
parsed (the prompt then makes no DivPO pair with `pairs.diversity: judge`).

    python -m selfimprove.stages.diversity --params params.yaml --run divpo --iteration 1 \
        --model runs/builtin/tiny-sums --scored runs/divpo/it1/rewards.jsonl \
        --out runs/divpo/it1/diversity.jsonl --stats runs/divpo/it1/diversity.json

In a loop: `pipeline: [generate, reward, diversity, pairs, train, evaluate]` with
`pairs: {rule: divpo, diversity: judge}`. The judge is the policy (the model being trained).
"""

from __future__ import annotations

import re

from selfimprove.backends import open_backend
from selfimprove.core import templates
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import (iteration_stage_args, read_jsonl, read_section, revision_for, stage_main,
                                    write_json, write_jsonl)



def pool_prompt(template: str, record: dict) -> str:
    """The judge prompt of one prompt's pool: its responses numbered from 1."""
    texts = [r if r is not None else c for r, c in zip(record.get("responses") or record["completions"],
                                                      record["completions"])]
    numbered = "\n\n".join(f"Response {i}:\n{text}" for i, text in enumerate(texts, 1))
    return template.replace("{question}", record.get("question") or record["prompt"]).replace("{responses}", numbered)


def verdict(text: str, size: int, settings: dict) -> list[float] | None:
    """1 for the most diverse, -1 for the least, 0 for the rest; None when either number is missing,
    out of range, or both name the same response."""
    found = [re.findall(settings[key], text) for key in ("most_pattern", "least_pattern")]
    if not all(found):
        return None
    most, least = int(found[0][-1]) - 1, int(found[1][-1]) - 1
    if not (0 <= most < size and 0 <= least < size) or most == least:
        return None
    return [1.0 if i == most else -1.0 if i == least else 0.0 for i in range(size)]


def judge_diversity(settings: dict, records: list[dict], backend, template: str) -> tuple[list[dict], dict]:
    prompts = [pool_prompt(template, r) for r in records]
    texts = [t[0] for t in backend.sample(prompts, 1, settings["temperature"], 1.0, settings["max_new_tokens"],
                                          settings["batch_size"], settings["seed"])]
    backend.close()
    judged = [{**r, "diversity": verdict(t, len(r["completions"]), settings), "diversity_verdict": t}
              for r, t in zip(records, texts)]
    unparsed = sum(r["diversity"] is None for r in judged)
    return judged, {"diversity_prompts": len(judged),
                    "diversity_unparsed_rate": unparsed / len(judged) if judged else 0.0}


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "scored", "out", "stats")
    run = read_section(args.params, args.run)
    settings = run[f"it{args.iteration}"]["diversity"]
    template = templates.load(settings["template"], ("question", "responses"))
    records = read_jsonl(args.scored)
    backend = open_backend(run, args.model, revision_for(run, args.model))
    judged, stats = judge_diversity(settings, records, backend, template)
    write_jsonl(args.out, judged)
    write_json(args.stats, stats)
    print(f"diversity: {stats['diversity_prompts']} pools judged, {stats['diversity_unparsed_rate']:.1%} unparsed")


SETTINGS = {
    "template": Setting(str, "diversity", "the judge prompt with {question} and {responses}: diversity (the "
                        "package's) or a path to a text file", file=True, resolve_file=templates.path,
                        check=templates.exists, fix="is not a file: use diversity or a path to a text file",
                        reads=Setting.Reads("template", ("question", "responses"))),
    "most_pattern": Setting(str, r"Most diverse:\s*(\d+)", "where the judge names the most diverse response"),
    "least_pattern": Setting(str, r"Least diverse:\s*(\d+)", "where the judge names the least diverse response"),
    "temperature": Setting(float, 0.0, "sampling temperature of the verdict"),
    "max_new_tokens": Setting(int, 32, "longest verdict, in tokens"),
    "batch_size": Setting(int, 64, "pools per forward pass"),
    "seed": Setting(int, 0, "sampling seed"),
}


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=ctx.policy, scored=ctx.inputs["scores"], out=out["scores"],
                                           stats=out["diversity_stats"]),
                    deps=[ctx.inputs["scores"]] + ([ctx.policy] if ctx.policy_is_dep else []),
                    params=[ctx.section("diversity")] + ctx.revision_keys(ctx.policy) + ctx.backend_keys,
                    outs=[out["scores"]], metrics=[out["diversity_stats"]])


STAGE = Stage("diversity", SETTINGS, node=node, reads=("scores",),
              writes={"scores": "diversity.jsonl", "diversity_stats": "diversity.json"},
              included=lambda settings: False,  # only where a loop's pipeline names it
              plugins=lambda ctx: [("backend", ctx.backend)])


if __name__ == "__main__":
    stage_main(main)
