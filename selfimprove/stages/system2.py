"""Run a System 2 prompting pipeline on every input (Distilling System 2 into System 1, Yu et al. 2024):
intermediate text from one or two prompt templates, then the final output, n samples of the whole
pipeline per input.

    python -m selfimprove.stages.system2 --params params.yaml --run s2 --iteration 1 \
        --model runs/builtin/smollm2-135m --out runs/s2/it1/samples.jsonl --stats runs/s2/it1/system2.json

The pipelines of the paper, as step templates (selfimprove/shipped/prompts/system2/; a text file of your own
works wherever a name does):
- chain of thought, one step: step1_template cot (steps, then the answer after ####);
- Rephrase-and-Respond, two steps: rar-rephrase (the model rephrases and expands the question), then
  rar-respond (it answers the question with its rephrasing beside it);
- System 2 Attention: s2a-rewrite (the model rewrites the input keeping only its relevant, unbiased
  part and the question), then s2a-answer (it answers from the rewrite alone, never the original).
A template names the question as {question} and the first step's output as {step1}. The final outputs
are written as samples in the generate stage's format, with the prompt the distilled model will see
(data.prompt_template) and the intermediate text in `system2_steps`: the vote stage and the system2
pair rule (pairs.steps_only: false) then keep an input only when its System 2 answers agree, and SFT
maps the plain prompt straight to the majority answer. Resumable in shards.
"""

from __future__ import annotations

import time
from pathlib import Path

from selfimprove.tasks import data as data_sources
from selfimprove.backends import open_backend, usage_figures
from selfimprove.core.errors import UserError
from selfimprove.core import templates
from selfimprove.models import model_identity
from selfimprove.stages.shards import discard, fingerprint, run_in_shards, scratch_dir
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import (iteration_stage_parser, read_section, revision_for, stage_main, write_json,
                                    write_jsonl)

def step_files(settings: dict) -> list[Path]:
    return [templates.path(settings[key]) for key in ("step1_template", "step2_template") if settings[key]]


def load_steps(settings: dict) -> list[str]:
    """The steps' templates, checked: step 1 uses {question}, step 2 uses {step1}, nothing else in braces."""
    steps = []
    for index, path in enumerate(step_files(settings)):
        if not path.is_file():
            raise UserError(f"system2.step{index + 1}_template: {path}: no such file; use "
                            "cot, rar-rephrase, s2a-rewrite (step 1), rar-respond, s2a-answer (step 2) or a path to a text file")
        text = path.read_text()
        found = templates.placeholders(text)
        needed = "question" if index == 0 else "step1"
        allowed = {"question"} | ({"step1"} if index else set())
        if needed not in found or found - allowed:
            raise UserError(f"{path}: step {index + 1} of system2 needs {{{needed}}} and may use only "
                            f"{', '.join('{' + a + '}' for a in sorted(allowed))} (write {{{{ }}}} for a literal brace)")
        steps.append(settings["prompt_template"].replace("{question}", text))
    return steps


def run_pipeline(backend, settings: dict, questions: list[str], seed: int, on_batch=None) -> list[list[dict]]:
    """n chains per question: each step's sample feeds the next; [{"steps": [...], "output": ...}] each."""
    steps, n = load_steps(settings), settings["n"]

    def draw(prompts: list[str], count: int, offset: int, callback=None) -> list[list[str]]:
        return backend.sample(prompts, count, settings["temperature"], settings["top_p"], settings["max_new_tokens"],
                              settings["batch_size"], seed + offset, on_batch=callback)

    first = draw([steps[0].format(question=q) for q in questions], n, 0, on_batch if len(steps) == 1 else None)
    if len(steps) == 1:
        return [[{"steps": [], "output": text} for text in texts] for texts in first]
    second_prompts = [steps[1].format(question=q, step1=text.strip()) for q, texts in zip(questions, first)
                      for text in texts]
    second = iter(t[0] for t in draw(second_prompts, 1, 1, on_batch and (lambda done: on_batch(done // n))))
    return [[{"steps": [text], "output": next(second)} for text in texts] for texts in first]


def system2(settings: dict, records: list[dict], model_ref: str, out: str | Path, system1_template: str,
            revision: str | None = None, backend=None) -> int:
    """Write one sample row per chain; return how many shards were reused."""
    out = Path(out)
    backend = backend or open_backend({}, model_ref, revision)
    steps = load_steps(settings)

    def work(shard: list[dict], index: int, on_done) -> list[dict]:
        chains = run_pipeline(backend, settings, [r["question"] for r in shard], settings["seed"] * 100003 + index,
                              on_done)
        return [{"id": r["id"], "prompt": system1_template.format(question=r["question"]), "question": r["question"],
                 "gold": r["answer"], "solution": r.get("solution"), "sample": j, "extra": False,
                 "completion": chain["output"], "system2_steps": chain["steps"], **data_sources.prompt_fields(r)}
                for r, per_question in zip(shard, chains) for j, chain in enumerate(per_question)]

    key = fingerprint(settings, steps, records, system1_template, model_identity(model_ref, revision))
    rows, reused = run_in_shards("system2", records, settings["shard_size"], out, key, work)
    backend.close()
    write_jsonl(out, rows)
    discard(out)
    return reused


def main(argv=None) -> None:
    args = iteration_stage_parser(__doc__, "model", "out", "stats").parse_args(argv)
    run = read_section(args.params, args.run)
    data = run["data"]
    settings = run[f"it{args.iteration}"]["system2"]
    records = data_sources.load_records(data["prompts"], data, data["prompts_size"], need_answers=False)
    revision = revision_for(run, args.model)
    backend = open_backend(run, args.model, revision, scratch=scratch_dir(args.out))
    started = time.monotonic()
    reused = system2(settings, records, args.model, args.out, data["prompt_template"], revision, backend)
    write_json(args.stats, {"system2_prompts": len(records), "system2_chains": len(records) * settings["n"],
                            "system2_steps": len(step_files(settings)),
                            "system2_seconds": round(time.monotonic() - started, 2), **usage_figures("system2", backend)})
    print(f"system2: {len(step_files(settings))} step(s) on {len(records)} prompts x {settings['n']}"
          + (f", {reused} shard(s) reused from an interrupted run" if reused else ""))


@declaration
def _step_file(name: str) -> Path | None:
    return templates.path(name) if name else None  # '' is no second step


SETTINGS = {
    "step1_template": Setting(str, "cot", "the first step: cot, rar-rephrase, s2a-rewrite or a text file "
                              "({question})", file=True, resolve_file=_step_file,
                              check=lambda v: bool(v) and _is_template(v),
                              fix="is not a template: use cot, rar-rephrase, s2a-rewrite or a path to a text file",
                              reads=Setting.Reads("template", ("question",))),
    "step2_template": Setting(str, "", "the second step, answering from the first's output: rar-respond, s2a-answer "
                              "or a text file ({step1}, optionally {question}); '' = one step", file=True,
                              resolve_file=_step_file, check=lambda v: not v or _is_template(v),
                              fix="is not a template: use '', rar-respond, s2a-answer or a path to a text file",
                              reads=Setting.Reads("template", ("step1",), allowed=("question", "step1"))),
    "prompt_template": Setting(str, "{question}", "wraps every step's prompt (a chat format)",
                               check=lambda v: "{question}" in v, fix="must contain {question}"),
    "n": Setting.count(8, "System 2 samples per input (their answers vote)"),
    "temperature": Setting(float, 0.7, "sampling temperature of every step"),
    "top_p": Setting(float, 0.9, "nucleus sampling mass"),
    "max_new_tokens": Setting.count(256, "longest output of a step, in tokens"),
    "batch_size": Setting.count(512, "sequences per forward pass"),
    "shard_size": Setting.count(128, "inputs per resumable shard"),
    "seed": Setting(int, 0, "sampling seed"),
}


@declaration
def _is_template(name: str) -> bool:
    return templates.exists(name)



@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=ctx.policy, out=out["samples"], stats=out["system2_stats"]),
                    deps=ctx.data_file("prompts") + ([ctx.policy] if ctx.policy_is_dep else []),
                    params=[ctx.section("system2")] + ctx.data_keys("prompts") + ctx.revision_keys(ctx.policy)
                    + ctx.backend_keys, outs=[out["samples"]], metrics=[out["system2_stats"]])


STAGE = Stage("system2", SETTINGS, node=node,
              plugins=lambda ctx: [("backend", ctx.backend)] + data_sources.task_plugins(ctx.data["prompts"]),
              writes={"samples": "samples.jsonl", "system2_stats": "system2.json"},
              included=lambda settings: False,  # only where a loop's pipeline names it
              metrics=(Stage.Metric("system2_cost*", "lower", role="cost",
                                    help="the backend's API cost, where prices are set (stop: budget)"),))


if __name__ == "__main__":
    stage_main(main)
