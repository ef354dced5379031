"""Synthetic preference pairs without labels (Self-Taught Evaluator, Wang et al. 2024): per instruction,
the model's own response is the good one; for the bad one the model writes a modified instruction, close
to the original but asking something else, and an answer to it, which answers the modified instruction
well and the original one badly.

    python -m selfimprove.stages.perturb --params params.yaml --run ste --iteration 1 \
        --model runs/ste/it0/model --samples runs/ste/it1/samples.jsonl \
        --out runs/ste/it1/contrast.jsonl --stats runs/ste/it1/perturb.json

The model is shown the question and its response in perturb.template (the paper's prompt by default).
With answer: inline it writes the modified instruction and its answer in one output, read with
instruction_pattern and response_pattern; with answer: solve it writes only the instruction, which the
model then answers as the generate stage answers a prompt (its prompt template and sampling settings).
A pair is dropped when the output cannot be read, when the instruction is the original one, or when
the bad response says what the good one says. Resumable in shards.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

from selfimprove.core import templates
from selfimprove.scoring import pairwise
from selfimprove.tasks.answers import extract_final, same_answer
from selfimprove.backends import open_backend
from selfimprove.scoring.judging import one_group
from selfimprove.models import model_identity
from selfimprove.stages.shards import discard, fingerprint, run_in_shards, scratch_dir
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import (iteration_stage_args, read_jsonl, read_section, revision_for, stage_main,
                                    write_json, write_jsonl)


def good_responses(samples: list[dict], choice: str) -> list[dict]:
    """One sample per prompt, the good response: the first, or (choice majority) the first whose final
    answer is the one most samples give (the model's self-consistent answer)."""
    by_prompt: dict[int, list[dict]] = defaultdict(list)
    for row in samples:
        if not row.get("extra"):
            by_prompt[row["id"]].append(row)
    chosen = []
    for prompt_id in sorted(by_prompt):
        rows = by_prompt[prompt_id]
        if choice == "majority":
            counts = Counter(a for a in (extract_final(r["completion"]) for r in rows) if a is not None)
            if counts:
                top = counts.most_common(1)[0][0]
                rows = [r for r in rows if extract_final(r["completion"]) == top]
        chosen.append(rows[0])
    return chosen


def read_output(text: str, pattern: str) -> str | None:
    """The first group of pattern in text, stripped; None when it does not match or is empty."""
    found = re.search(pattern, text)
    value = found.group(1).strip() if found else ""
    return value or None


def first_usable(texts: list[str], question: str, settings: dict) -> str:
    """The first of a prompt's tries whose modified instruction can be read and is not the question (and,
    answer inline, whose answer can be read); the first try when none is."""
    for text in texts:
        instruction = read_output(text, settings["instruction_pattern"])
        if instruction is None or _same_text(instruction, question):
            continue
        if settings["answer"] == "inline" and read_output(text, settings["response_pattern"]) is None:
            continue
        return text
    return texts[0]


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def same_response(good: str, bad: str, marker: str) -> bool:
    """Whether the bad response says what the good one says: the same final answer where both state
    one, else the same text after the marker."""
    good_answer, bad_answer = extract_final(good), extract_final(bad)
    if good_answer is not None and bad_answer is not None:
        return same_answer(bad_answer, good_answer)
    return (pairwise.view(good, marker) or "").strip() == (pairwise.view(bad, marker) or "").strip()


def perturb(settings: dict, generate_settings: dict, samples: list[dict], model_ref: str, out: str | Path,
            answer_template: str, revision: str | None = None, backend=None) -> tuple[list[dict], dict]:
    """(contrast pairs, figures). answer_template is the prompt the model answers a modified instruction
    in (answer: solve): the generate stage's."""
    out = Path(out)
    template = pairwise.wrap(templates.load(settings["template"], pairwise.PERTURB_PLACEHOLDERS),
                             settings["prompt_template"])
    good = good_responses(samples, settings["good"])
    backend = backend or open_backend({}, model_ref, revision)
    marker = settings["response_marker"]

    def work(shard: list[dict], index: int, on_done) -> list[dict]:
        prompts = [template.format(question=row["question"], response=pairwise.view(row["completion"], marker) or "")
                   for row in shard]
        seed = settings["seed"] * 100003 + index
        tries = backend.sample(prompts, settings["tries"], settings["temperature"], settings["top_p"],
                               settings["max_new_tokens"], settings["batch_size"], seed, on_batch=on_done)
        written = [first_usable(texts, row["question"], settings) for texts, row in zip(tries, shard)]
        instructions = [read_output(t, settings["instruction_pattern"]) for t in written]
        if settings["answer"] == "inline":
            answers = [read_output(t, settings["response_pattern"]) for t in written]
        else:  # the model answers each modified instruction as it answers any prompt
            todo = [answer_template.format(question=i) for i in instructions if i is not None]
            solved = iter(t[0] for t in backend.sample(todo, 1, generate_settings["temperature"],
                                                       generate_settings["top_p"], generate_settings["max_new_tokens"],
                                                       settings["batch_size"], seed + 1))
            answers = [next(solved) if i is not None else None for i in instructions]
        return [{"row": row, "perturb_prompt": p, "written": w, "instruction": i, "answer": a}
                for row, p, w, i, a in zip(shard, prompts, written, instructions, answers)]

    key = fingerprint(settings, generate_settings, answer_template, good, model_identity(model_ref, revision))
    done, _ = run_in_shards("perturb", good, settings["shard_size"], out, key, work, unit="prompts")
    backend.close()
    pairs, figures = contrast_pairs(done, marker)
    write_jsonl(out, pairs)
    discard(out)
    return pairs, figures


def contrast_pairs(done: list[dict], marker: str) -> tuple[list[dict], dict]:
    pairs, dropped = [], Counter()
    for item in done:
        row, instruction, answer = item["row"], item["instruction"], item["answer"]
        if instruction is None or answer is None:
            dropped["unparsed"] += 1
        elif _same_text(instruction, row["question"]):
            dropped["same_instruction"] += 1
        elif same_response(row["completion"], answer, marker):
            dropped["same_response"] += 1
        else:
            gold = row.get("gold")
            pairs.append({"id": row["id"], "prompt": row["prompt"], "question": row["question"], "gold": gold,
                          "good": row["completion"], "bad": answer, "modified_instruction": instruction,
                          # statistics only (gold answers where the data has them): the construction's noise
                          "good_correct": same_answer(extract_final(row["completion"]), gold) if gold is not None else None,
                          "bad_correct": same_answer(extract_final(answer), gold) if gold is not None else None})
    labelled = [p for p in pairs if p["good_correct"] is not None]
    figures = {"perturb_prompts": len(done), "perturb_pairs": len(pairs),
               **{f"perturb_dropped_{reason}": dropped[reason] for reason in ("unparsed", "same_instruction", "same_response")},
               "perturb_labelled": len(labelled)}
    if labelled:
        figures["perturb_good_correct_rate"] = sum(p["good_correct"] for p in labelled) / len(labelled)
        figures["perturb_bad_correct_rate"] = sum(p["bad_correct"] for p in labelled) / len(labelled)
    return pairs, figures


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "samples", "out", "stats")
    run = read_section(args.params, args.run)
    stages = run[f"it{args.iteration}"]
    generate_settings = stages["generate"]
    answer_template = generate_settings["prompt_template"] or run["data"]["prompt_template"]
    revision = revision_for(run, args.model)
    backend = open_backend(run, args.model, revision, scratch=scratch_dir(args.out))
    pairs, figures = perturb(stages["perturb"], generate_settings, read_jsonl(args.samples), args.model, args.out,
                             answer_template, revision, backend)
    write_json(args.stats, figures)
    dropped = sum(v for k, v in figures.items() if k.startswith("perturb_dropped_"))
    print(f"perturb: {len(pairs)} contrast pairs from {figures['perturb_prompts']} prompts ({dropped} dropped)")


SETTINGS = {
    "template": templates.setting("worse-response", "worse-response, tiny-arith-perturb",
                                          "the prompt asking for a modified instruction: {question} {response}",
                                  placeholders=pairwise.PERTURB_PLACEHOLDERS),
    "prompt_template": Setting(str, "{question}", "wraps the perturb prompt (a chat format)",
                               check=lambda v: "{question}" in v, fix="must contain {question}"),
    "answer": Setting(str, "inline", "inline: the output holds the modified instruction and its answer; solve: it "
                      "holds the instruction, which the model then answers as generate does", choices=("inline", "solve")),
    "instruction_pattern": Setting(str, r"(?s)\[Modified Instruction\]\s*(.*?)\s*(?:\[The Start of|$)",
                                   "where the modified instruction is in the output (one group)", check=one_group,
                                   fix="must be a regular expression with one group capturing the instruction"),
    "response_pattern": Setting(str, r"(?s)\[The Start of Assistant's Answer to the Modified Instruction\]\s*(.*?)\s*"
                                r"(?:\[The End of|$)", "answer inline: where the bad response is in the output (one group)",
                                check=one_group, fix="must be a regular expression with one group capturing the response"),
    "good": Setting(str, "first", "the good response of a prompt: first (its first sample, as the paper) or majority "
                    "(the first whose final answer most samples give)", choices=("first", "majority")),
    "response_marker": Setting(str, "", "the perturb prompt shows the good response after this marker (\"\" = all)"),
    "tries": Setting(int, 1, "outputs sampled per prompt; the first with a readable instruction that is not the "
                     "original one is used", check=lambda v: v >= 1, fix="must be >= 1"),
    "temperature": Setting(float, 0.7, "sampling temperature of the modified instructions"),
    "top_p": Setting(float, 0.9, "nucleus sampling mass"),
    "max_new_tokens": Setting.count(1024, "longest output, in tokens"),
    "batch_size": Setting.count(512, "sequences per forward pass"),
    "shard_size": Setting.count(256, "prompts per resumable shard"),
    "seed": Setting(int, 0, "sampling seed"),
}


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    template = [key for key in ctx.data_keys("prompts") if key.endswith(".prompt_template")]
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=ctx.policy, samples=ctx.inputs["samples"], out=out["contrast"],
                                           stats=out["perturb_stats"]),
                    deps=[ctx.inputs["samples"]] + ([ctx.policy] if ctx.policy_is_dep else []),
                    params=[ctx.section("perturb"), ctx.section("generate")] + template
                    + ctx.revision_keys(ctx.policy) + ctx.backend_keys,
                    outs=[out["contrast"]], metrics=[out["perturb_stats"]])


STAGE = Stage("perturb", SETTINGS, node=node, reads=("samples",),
              writes={"contrast": "contrast.jsonl", "perturb_stats": "perturb.json"},
              included=pairwise.judges_pairs, plugins=lambda ctx: [("backend", ctx.backend)])


if __name__ == "__main__":
    stage_main(main)
