"""Evaluate a model on the held-out labelled set: greedy accuracy and maj@k, as counts and ratios, and how
often outputs write steps before their answer (with the majority of the samples that do: System 2 on
its own); for judge loops also the model's skill as a judge (agreement with the truth on held-out
candidate answers) and, with a response marker (TPO), how often it thinks before answering; with a
word limit (LIFT), greedy answers under it, the limit hard.

    python -m selfimprove.stages.evaluate --params params.yaml --run scpo --iteration 1 \
        --model runs/scpo/it1/model --out runs/scpo/it1/metrics.json
"""

from __future__ import annotations

from collections import Counter

# Code evaluation runs only in some loops, named here rather than imported: it counts in the code
# fingerprint of exactly the evaluations that run it (the node names it, see plugins below).
JUDGE_METRICS = "selfimprove.scoring.judge_metrics"  # loops with a judge
LENGTHS = "selfimprove.scoring.lengths"  # LIFT: evaluate.length_limit

from selfimprove.backends import open_backend
from selfimprove.core import templates
from selfimprove.core.registry import load
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages.progress import Progress
from selfimprove.stages.shards import discard, scratch_dir
from selfimprove.tasks import data as data_sources
from selfimprove.tasks.answers import extract_final, has_steps, same_answer
from selfimprove.stages._io import (iteration_stage_parser, read_jsonl, read_section, revision_for, stage_main,
                                    write_json, write_jsonl)


def score(records: list[dict], greedy: list[str], samples: list[list[str]]) -> dict:
    """Metrics from completions: greedy accuracy, maj@k, mean per-sample accuracy, parse failures."""
    n = len(records)
    greedy_correct = sum(same_answer(extract_final(g), r["answer"]) for r, g in zip(records, greedy))
    majority_correct = sample_correct = unparsed = total_samples = reasoning = reasoning_correct = 0
    for record, texts in zip(records, samples):
        answers = [extract_final(t) for t in texts]
        unparsed += sum(a is None for a in answers)
        total_samples += len(answers)
        sample_correct += sum(same_answer(a, record["answer"]) for a in answers)
        if majority_is(answers, record["answer"]):
            majority_correct += 1
        # System 2 on its own: the majority of the samples that write steps before their answer
        stepped = [a for a, t in zip(answers, texts) if has_steps(t)]
        reasoning += len(stepped)
        reasoning_correct += majority_is(stepped, record["answer"])
    return {
        "problems": n,
        "greedy_correct": greedy_correct, "accuracy": greedy_correct / n if n else 0.0,
        "maj_correct": majority_correct, "maj_at_k": majority_correct / n if n else 0.0,
        "sample_accuracy": sample_correct / total_samples if total_samples else 0.0,
        "parse_failure_rate": unparsed / total_samples if total_samples else 0.0,
        "greedy_steps_rate": sum(map(has_steps, greedy)) / n if n else 0.0,
        "sample_steps_rate": reasoning / total_samples if total_samples else 0.0,
        "steps_maj_correct": reasoning_correct, "steps_maj_at_k": reasoning_correct / n if n else 0.0,
    }


def majority_is(answers: list, gold) -> bool:
    counts = Counter(a for a in answers if a is not None)
    return bool(counts) and same_answer(counts.most_common(1)[0][0], gold)


def heldout_answer(record: dict, greedy: str) -> dict:
    """A held-out problem's greedy output (what `selfimprove show --heldout` and the report list), with its
    gold answer and whether the output is right, as accuracy counts it, where the set has answers."""
    row = {"id": record["id"], "question": record["question"], "output": greedy}
    if record.get("answer") is not None:
        row.update(answer=record["answer"], correct=same_answer(extract_final(greedy), record["answer"]))
    return row


def length_stats(outputs: list[str]) -> dict:
    """Response length in characters (instruction loops drift longer: the length the judge rewards)."""
    lengths = sorted(map(len, outputs))
    if not lengths:
        return {}
    return {"mean_length": sum(lengths) / len(lengths), "median_length": float(lengths[len(lengths) // 2]),
            "p90_length": float(lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))])}


def evaluate(settings: dict, records: list[dict], model_ref: str, template: str = "{question}",
             revision: str | None = None, judge: dict | None = None, backend=None,
             task_metrics=None) -> tuple[dict, list[str]]:
    """(metrics, greedy outputs). Solving metrics need gold answers; instruction prompts have none, and
    their iterations are compared by win rate (win_rate) on the greedy outputs instead. A builtin task
    with its own evaluation (task_metrics) gets it on the k samples per prompt."""
    backend = backend or open_backend({}, model_ref, revision)
    prompts = [template.format(question=r["question"]) for r in records]
    labelled = all(r["answer"] is not None for r in records)
    k = settings["k"] if labelled or task_metrics else 0
    judge_size = settings["judge_size"] if judge and labelled else 0
    # Progress in sequences: one greedy pass, then k samples per problem, then the judge's candidates.
    length_pass = len(prompts) if settings["length_limit"] else 0
    progress = Progress("evaluate", len(prompts) * (1 + k) + length_pass + judge_size, "sequences")
    greedy = [texts[0] for texts in backend.sample(prompts, 1, 0.0, 1.0, settings["max_new_tokens"],
                                                   settings["batch_size"], settings["seed"], on_batch=progress.update)]
    metrics = {"problems": len(records), **length_stats(greedy)}
    if k:
        samples = backend.sample(prompts, k, settings["temperature"], settings["top_p"], settings["max_new_tokens"],
                                 settings["batch_size"], settings["seed"],
                                 on_batch=lambda done: progress.update(len(prompts) + done * k))
        metrics.update(score(records, greedy, samples) if labelled else {}, k=k)
        metrics.update(task_metrics(records, samples) if task_metrics else {})
    if judge and judge["response_marker"]:
        metrics.update(load(f"{JUDGE_METRICS}:thinking")(greedy, judge["response_marker"]))
    if settings["length_limit"]:
        done = len(prompts) * (1 + k)
        metrics.update(load(f"{LENGTHS}:length_instructed")(backend, settings, records, template,
                                                          on_batch=lambda n: progress.update(done + n)))
    if judge_size:
        done = len(prompts) * (1 + k) + length_pass
        metrics.update(load(f"{JUDGE_METRICS}:judge_agreement")(backend, records, judge, judge_size, settings["seed"],
                                                               on_batch=lambda n: progress.update(done + n)))
    backend.close()
    return metrics, greedy


def main(argv=None) -> None:
    parser = iteration_stage_parser(__doc__, "model", "out")
    parser.add_argument("--outputs", help="write the greedy outputs here (iteration 0's feed the win rate)")
    parser.add_argument("--base-outputs", help="iteration 0's greedy outputs: compute the win rate against them")
    parser.add_argument("--win-judge", help="the model judging the win rate (the loop's base model)")
    args = parser.parse_args(argv)
    run = read_section(args.params, args.run)
    data = run["data"]
    records = data_sources.load_records(data["eval"], data, data["eval_size"], need_answers=False)
    stages = run[f"it{args.iteration}"]
    revision = revision_for(run, args.model)
    metrics, greedy = evaluate(stages["evaluate"], records, args.model, data["prompt_template"], revision,
                               judge=stages.get("judge"),
                               backend=open_backend(run, args.model, revision, scratch=scratch_dir(args.out)),
                               task_metrics=data_sources.task_metrics(data["eval"]))
    if args.outputs:
        write_jsonl(args.outputs, [heldout_answer(r, g) for r, g in zip(records, greedy)])
    if args.base_outputs:
        base = [row["output"] for row in read_jsonl(args.base_outputs)]
        judge_backend = open_backend(run, args.win_judge, revision_for(run, args.win_judge), scratch=scratch_dir(args.out))
        win_rate = load(f"{JUDGE_METRICS}:win_rate")
        metrics.update(win_rate(stages["evaluate"], stages["judge"], records, greedy, base, judge_backend))
    write_json(args.out, metrics)
    discard(args.out)  # the OpenAI backend's response cache, once the metrics are written
    print("evaluate: " + ", ".join(f"{key} {metrics[key]:.3f}" for key in
                                   ("accuracy", "maj_at_k", "judge_agreement", "win_rate_vs_base", "mean_length",
                                    "li_violation_rate", "li_accuracy")
                                   if key in metrics))


SETTINGS = {
    "k": Setting.count(8, "samples per problem for maj@k"),
    "temperature": Setting(float, 0.7, "temperature of the maj@k samples"),
    "top_p": Setting(float, 0.9, "nucleus sampling mass of the maj@k samples"),
    "max_new_tokens": Setting(int, 64, "longest completion, in tokens"),
    "batch_size": Setting(int, 512, "sequences per forward pass"),
    "judge_size": Setting(int, 0, "judge loops: held-out candidate answers to measure the judge's agreement on",
                          check=lambda v: v >= 0, fix="must be >= 0 (0: off)"),
    "win_rate_size": Setting(int, 0, "judge loops: held-out prompts on which iteration K meets iteration 0 (0: off)",
                             check=lambda v: v >= 0, fix="must be >= 0 (0: off)"),
    "win_template": templates.setting("pairwise", "pairwise", "the comparison prompt: {question} {response_a} "
                                      "{response_b}", placeholders=("question", "response_a", "response_b")),
    "seed": Setting(int, 1234, "sampling seed"),
    "length_limit": Setting(int, 0, "LIFT: also answer greedily under this word limit (0: off) and report the "
                            "violation rate and the accuracy with the limit hard", check=lambda v: v >= 0,
                            fix="must be >= 0 (0: off)", omit_default=True),
    "length_template": Setting(str, templates.load("lift-paper"), "LIFT: the length instruction ({max_len}, {instruction})",
                               check=lambda v: "{max_len}" in v and "{instruction}" in v,
                               fix="must contain {max_len} and {instruction}", omit_default=True),
}


@declaration
def _win_rate(ctx: Context) -> bool:
    """Iterations meet iteration 0 where the loop judges (its judge settings) and asks for a win rate."""
    return "judge" in ctx.tracked and ctx.settings["evaluate"]["win_rate_size"] > 0


@declaration
def files(ctx: Context) -> list[tuple[str, str]]:
    """The templates evaluation reads: the win rate's, and the judge's where the judge's agreement is
    measured."""
    judged = "judge" in ctx.tracked
    return ([("evaluate", "win_template")] if _win_rate(ctx) else []) + \
        ([("judge", "template")] if judged and ctx.settings["evaluate"]["judge_size"] > 0 else [])


@declaration
def node(ctx: Context) -> dict:
    """Evaluation of iteration k: its metrics and its greedy outputs per problem. With
    evaluate.win_rate_size, iterations k >= 1 meet iteration 0's outputs, judged by the loop's base model (a
    fixed judge)."""
    out = ctx.outputs
    cmd = ctx.command(STAGE, model=ctx.policy, out=out["metrics"])
    deps = ctx.data_file("eval") + ([ctx.policy] if ctx.policy_is_dep else [])
    params = ([ctx.section("evaluate")] + ([ctx.section("judge")] if "judge" in ctx.tracked else [])
              + ctx.data_keys("eval") + ctx.revision_keys(ctx.policy) + ctx.backend_keys)
    # every iteration writes its greedy answers per problem: what `show --heldout` and the report list
    cmd += f" --outputs {out['outputs']}"
    outs = [out["outputs"]]
    if _win_rate(ctx):
        if ctx.k > 0:
            base_outputs = out["outputs"].replace(f"/it{ctx.k}/", "/it0/")
            cmd += f" --base-outputs {base_outputs} --win-judge {ctx.base}"
            deps += [base_outputs] + ([ctx.base] if ctx.base_is_dep and ctx.base != ctx.policy else [])
            params += [key for key in ctx.revision_keys(ctx.base) if key not in params]
    return ctx.node(STAGE, cmd=cmd, deps=deps, params=params, outs=outs, metrics=[out["metrics"]])


STAGE = Stage("evaluate", SETTINGS, node=node, writes={"metrics": "metrics.json", "outputs": "outputs.jsonl"},
              files=files, settings_of=("judge",), base_iteration=True,
              plugins=lambda ctx: [("backend", ctx.backend)] + data_sources.task_plugins(ctx.data["eval"])
              + ([("module", JUDGE_METRICS)] if "judge" in ctx.tracked else [])
              + ([("module", LENGTHS)] if ctx.settings["evaluate"]["length_limit"] else []),
              metrics=(Stage.Metric("accuracy", "higher", "problems", headline=True, curve=True, order=10,
                                    help="greedy accuracy on the held-out problems"),
                       Stage.Metric("maj_at_k", "higher", "problems", curve=True, order=20,
                                    help="accuracy of the majority answer of k samples per problem"),
                       Stage.Metric("sample_accuracy", "higher", order=30, help="accuracy of the k samples"),
                       Stage.Metric("judge_agreement", "higher", "judge_eval_candidates", order=110,
                                    help="judge loops: the judge's verdicts agreeing with the truth, held out"),
                       Stage.Metric("win_rate_vs_base", "higher", order=120,
                                    help="greedy outputs' win rate against iteration 0's, both orders"),
                       Stage.Metric("win_position_consistency", "higher", order=130,
                                    help="comparisons whose two orders agree"),
                       Stage.Metric("thought_rate", None, "problems", order=140,
                                    help="greedy outputs with the judge's response marker"),
                       Stage.Metric("mean_length", None, order=150, role="length", unit="characters",
                                    help="mean greedy output length, characters (stop: length_factor)"),
                       Stage.Metric("greedy_correct", "higher", order=160, help="problems solved greedily"),
                       Stage.Metric("maj_correct", "higher", order=170, help="problems the majority solves"),
                       Stage.Metric("problems", order=180, help="held-out problems evaluated"),
                       Stage.Metric("parse_failure_rate", "lower", order=190,
                                    help="greedy outputs with no answer to read"),
                       Stage.Metric("judge_eval_candidates", help="candidate answers the judge's agreement is on"),
                       Stage.Metric("k", help="samples per problem (maj_at_k)"),
                       Stage.Metric("median_length", None, unit="characters", help="median greedy output length, characters"),
                       Stage.Metric("p90_length", None, unit="characters", help="90th percentile greedy output length, characters"),
                       Stage.Metric("greedy_steps_rate", None, help="greedy outputs that show worked steps"),
                       Stage.Metric("sample_steps_rate", None, help="samples that show worked steps"),
                       Stage.Metric("steps_maj_at_k", "higher", help="maj_at_k of the samples with worked steps"),
                       Stage.Metric("steps_maj_correct", "higher", help="problems the majority of those samples solves")))


if __name__ == "__main__":
    stage_main(main)
