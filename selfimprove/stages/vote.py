"""Extract each sample's final answer and count votes per prompt (self-consistency).

    python -m selfimprove.stages.vote --params params.yaml --run scpo --iteration 1 \
        --samples runs/scpo/it1/samples.jsonl --out runs/scpo/it1/votes.jsonl
"""

from __future__ import annotations

from collections import Counter, defaultdict

from selfimprove.tasks.answers import extract_final
from selfimprove.scoring.rules import needs
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import iteration_stage_args, read_jsonl, read_section, stage_main, write_jsonl

# How a sample's final answer is read; one entry per answer format.
EXTRACTORS = {"final_number": extract_final}


def vote(samples: list[dict], extract: str = "final_number") -> list[dict]:
    """One record per prompt: its samples with their answers, the vote counts and the majority.
    A sample with no parseable answer votes for nothing (answer None) and can never be chosen.
    Extra samples (ScPO's high-temperature draws) get answers but no votes: V counts the n voters."""
    by_prompt: dict[int, list[dict]] = defaultdict(list)
    for row in samples:
        by_prompt[row["id"]].append(row)
    records = []
    for prompt_id in sorted(by_prompt):
        rows = by_prompt[prompt_id]
        answers = [EXTRACTORS[extract](r["completion"]) for r in rows]
        voters = [a for a, r in zip(answers, rows) if not r.get("extra")]
        counts = Counter(a for a in voters if a is not None)
        majority, majority_votes = (counts.most_common(1)[0] if counts else (None, 0))
        records.append({
            "id": prompt_id, "prompt": rows[0]["prompt"], "question": rows[0].get("question"), "gold": rows[0].get("gold"),
            "solution": rows[0].get("solution"), "completions": [r["completion"] for r in rows],
            "answers": answers, "extra": [bool(r.get("extra")) for r in rows],
            "votes": dict(counts), "majority": majority, "majority_votes": majority_votes, "n": len(voters),
        })
    return records


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "samples", "out")
    settings = read_section(args.params, f"{args.run}.it{args.iteration}.vote")
    records = vote(read_jsonl(args.samples), settings["extract"])
    write_jsonl(args.out, records)
    print(f"vote: {len(records)} prompts")


SETTINGS = {
    "extract": Setting(str, "final_number", "how a sample's final answer is read (the number after ####, "
                       "else the last number)", choices=tuple(EXTRACTORS)),
}


@declaration
def node(ctx: Context) -> dict:
    return ctx.node(STAGE, cmd=ctx.command(STAGE, samples=ctx.inputs["samples"], out=ctx.outputs["votes"]),
                    deps=[ctx.inputs["samples"]], params=[ctx.section("vote")], outs=[ctx.outputs["votes"]])


STAGE = Stage("vote", SETTINGS, node=node, reads=("samples",), writes={"votes": "votes.jsonl"},
              included=lambda settings: needs(settings) == "votes")


if __name__ == "__main__":
    stage_main(main)
