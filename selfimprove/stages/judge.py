"""Score every sampled response with an LLM judge (LLM-as-a-judge, Self-Rewarding's additive rubric by
default): n judgements per response, parsed and averaged, every judgement kept.

    python -m selfimprove.stages.judge --params params.yaml --run self_rewarding --iteration 1 \
        --model runs/self_rewarding/it0/model --samples runs/self_rewarding/it1/samples.jsonl \
        --out runs/self_rewarding/it1/judgements.jsonl --stats runs/self_rewarding/it1/judge.json

The judge sees the question and the response only: with judge.response_marker set (TPO), the thought
before the marker is cut off, and an output without the marker cannot be split, is not judged and is
marked unsplittable (the pair rules reject it). Health figures go to the stats file; a parse-failure
rate above judge.max_failure_rate fails the stage, quoting what the judge wrote. Resumable in shards.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from selfimprove.core import templates
from selfimprove.core.registry import load
from selfimprove.scoring import judging
from selfimprove.tasks.answers import extract_final, same_answer
from selfimprove.backends import open_backend, usage_figures
from selfimprove.models import model_identity
from selfimprove.scoring.rules import needs
from selfimprove.stages.shards import discard, fingerprint, run_in_shards, scratch_dir
from selfimprove.scoring.judge_scores import distributions_after, score_distributions
from selfimprove.scoring.judging import one_group
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import (iteration_stage_args, read_jsonl, read_section, revision_for, stage_main,
                                    write_json, write_jsonl)

# The client of a judge behind a server (source openai), named rather than imported: it counts in the
# fingerprint of the judge stages that use it (plugins below), not of every judge.
OPENAI_CLIENT = "selfimprove.backends.openai_client"


def judge_prompts(samples: list[dict], template: str, marker: str) -> list[dict]:
    """One item per sample: its response and the judge prompt, or prompt None when it cannot be split."""
    items = []
    for row in samples:
        split = judging.split_response(row["completion"], marker)
        response = split[1] if split else None
        prompt = template.format(question=row["question"], response=response) if split else None
        items.append({"id": row["id"], "sample": row["sample"], "response": response, "judge_prompt": prompt})
    return items


def collect(samples: list[dict], judged: list[dict], settings: dict) -> list[dict]:
    """One record per prompt: its completions, responses, judgements, scores, mean scores, and whether
    each response is right where a gold answer exists (statistics only; no pair rule reads it)."""
    by_prompt: dict[int, list[tuple[dict, dict]]] = defaultdict(list)
    for row, item in zip(samples, judged):
        by_prompt[row["id"]].append((row, item))
    records = []
    for prompt_id in sorted(by_prompt):
        rows = by_prompt[prompt_id]
        first = rows[0][0]
        scores = [_scores(item, settings) for _, item in rows]
        records.append({
            "id": prompt_id, "prompt": first["prompt"], "question": first["question"], "gold": first.get("gold"),
            "completions": [row["completion"] for row, _ in rows],
            "responses": [item["response"] for _, item in rows],
            "unsplittable": [item["response"] is None for _, item in rows],
            "judgements": [item["judgements"] for _, item in rows],
            **({"score_probs": [item["score_probs"] for _, item in rows]} if "score_probs" in rows[0][1] else {}),
            "scores": scores,
            "mean_scores": [judging.mean(s) for s in scores],
            "correct": [_correct(row) for row, _ in rows],
            **judging.carried([row for row, _ in rows]),
        })
    return records


def _scores(item: dict, settings: dict) -> list:
    """A response's scores: parsed from each written judgement, or probability-weighted (one per
    judgement; mode expected has one judgement without text), None when too little of the judge's
    mass falls on the score digits."""
    if "score_probs" not in item:
        return [judging.parse_score(t, settings["score_pattern"], settings["max_score"]) for t in item["judgements"]]
    return [judging.expected_score(p, settings["min_score_mass"]) for p in item["score_probs"]]


def _correct(row: dict) -> bool | None:
    if row.get("gold") is None:
        return None
    return same_answer(extract_final(row["completion"]), row["gold"])


def judge(settings: dict, samples: list[dict], model_ref: str, out: str | Path, revision: str | None = None,
          generate_judgements=None, backend=None) -> tuple[list[dict], dict]:
    """Judge the samples; return (records, health figures). generate_judgements(prompts, shard, on_done)
    -> n texts per prompt may be given (tests script a judge with it); by default the judge model writes
    them. Modes expected and generate_then_expected read the score from the judge's probabilities
    (score_distributions). The judge prompt is wrapped in judge.prompt_template (a chat format)."""
    out = Path(out)
    template = judging.wrap(templates.load(settings["template"], ("question", "response")), settings)
    items = judge_prompts(samples, template, settings["response_marker"])
    if generate_judgements is None and settings["source"] == "openai":
        generate_judgements = _endpoint_judge(settings)
    backend = backend or open_backend({}, model_ref, revision)
    mode = settings["mode"]

    def work(shard: list[dict], index: int, on_done) -> list[dict]:
        todo = [item["judge_prompt"] for item in shard if item["judge_prompt"] is not None]
        if not todo:  # nothing in this shard could be split
            return [{**item, "judgements": [], **({"score_probs": []} if mode != "generate" else {})} for item in shard]
        if mode == "expected":  # no text: the score digit's distribution right after the prompt
            found = iter([[p] for p in score_distributions(backend, todo, settings, on_done)])
            texts = iter([[] for _ in todo])
        else:
            written = (generate_judgements or _model_judge(settings, backend))(todo, index, on_done)
            texts = iter(written)
            if mode == "generate_then_expected":  # the judgement as written, then its score read
                found = iter(distributions_after(backend, todo, written, settings))
        rows = []
        for item in shard:
            row = {**item, "judgements": next(texts) if item["judge_prompt"] is not None else []}
            if mode != "generate":
                row["score_probs"] = next(found) if item["judge_prompt"] is not None else []
            rows.append(row)
        return rows

    key = fingerprint(settings, items, model_identity(model_ref, revision))
    judged, _ = run_in_shards("judge", items, settings["shard_size"], out, key, work, unit="responses")
    backend.close()
    records = collect(samples, judged, settings)
    figures = judging.health(records, settings["max_score"])
    judging.check_failure_rate(records, figures, settings["max_failure_rate"], settings["score_pattern"])
    write_jsonl(out, records)
    discard(out)
    return records, figures


def _model_judge(settings: dict, backend):
    """n sampled judgements per prompt from the judge model."""

    def generate_judgements(prompts: list[str], shard_index: int, on_done) -> list[list[str]]:
        return backend.sample(prompts, settings["n"], settings["temperature"], settings["top_p"],
                              settings["max_new_tokens"], settings["batch_size"],
                              settings["seed"] * 100003 + shard_index, on_batch=on_done)

    return generate_judgements


def _endpoint_judge(settings: dict):
    """n judgements per prompt from an OpenAI-compatible server."""
    endpoint = load(f"{OPENAI_CLIENT}:Endpoint")(settings["endpoint"], settings["api_model"], settings["api_key_env"], settings["concurrency"],
                        settings["timeout"], settings["max_retries"])

    def generate_judgements(prompts: list[str], shard_index: int, on_done) -> list[list[str]]:
        return endpoint.complete(prompts, settings["n"], settings["temperature"], settings["top_p"],
                                 settings["max_new_tokens"], on_done)

    return generate_judgements


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "samples", "out", "stats")
    run = read_section(args.params, args.run)
    settings = run[f"it{args.iteration}"]["judge"]
    revision = revision_for(run, args.model)
    backend = open_backend(run, args.model, revision, scratch=scratch_dir(args.out))
    _, figures = judge(settings, read_jsonl(args.samples), args.model, args.out, revision, backend=backend)
    write_json(args.stats, {**figures, **usage_figures("judge", backend)})
    agreement = f", agreement with gold {figures['judge_sample_agreement']:.3f}" if "judge_sample_agreement" in figures else ""
    print(f"judge: {figures['judge_judgements']} judgements, parse failures {figures['judge_parse_failure_rate']:.1%}, "
          f"ties {figures['judge_tie_rate']:.1%}{agreement}")


SETTINGS = {
    "source": Setting(str, "self", "who judges: self (the policy judges its own samples), openai, or a model "
                      "directory / hub id", reads=Setting.Reads("model", not_files=("self", "openai"))),
    "endpoint": Setting(str, "", "source openai: base URL of an OpenAI-compatible server, e.g. http://host:8000/v1"),
    "api_model": Setting(str, "", "source openai: the model name the server knows"),
    "api_key_env": Setting(str, "", "source openai: the environment variable holding the key (never the key)"),
    "concurrency": Setting.count(8, "source openai: requests in flight"),
    "timeout": Setting(float, 60.0, "source openai: seconds per request"),
    "max_retries": Setting(int, 5, "source openai: retries on 429, 5xx and dropped connections, with backoff"),
    "template": templates.setting("additive", "additive, pairwise, tiny-arith", "the judge prompt: {question} {response}",
                                  placeholders=("question", "response")),
    "mode": Setting(str, "generate", "generate: write judgements, parse `Score: N`; expected: the score digits' "
                    "probabilities after prompt + prefill, score = their mean; generate_then_expected: both",
                    choices=("generate", "expected", "generate_then_expected")),
    "prefill": Setting(str, "Score: ", "mode expected: text appended to the judge prompt before the score digit"),
    "min_score_mass": Setting(float, 0.1, "mode expected: less probability than this on the digits is a failure",
                              check=lambda v: 0 <= v <= 1, fix="is a probability; use a value in [0, 1]"),
    "prompt_template": Setting(str, "{question}", "wraps judge, meta-judge and win-rate prompts (a chat format)",
                               check=lambda v: "{question}" in v,
                               fix="must contain {question}, where the judge prompt goes, e.g. "
                                   "'<|im_start|>user\\n{question}<|im_end|>...'"),
    "n": Setting(int, 3, "judgements per response, averaged (Self-Rewarding: 3)", check=lambda v: v >= 1,
                 fix="must be >= 1"),
    "temperature": Setting(float, 0.7, "sampling temperature of the judgements"),
    "top_p": Setting(float, 0.9, "nucleus sampling mass of the judgements"),
    "max_new_tokens": Setting(int, 256, "longest judgement, in tokens"),
    "response_marker": Setting(str, "", "TPO: the judge sees only the text after it (\"\" = everything)"),
    "score_pattern": Setting(str, r"Score:\s*(\d+)", "where the score is in a judgement", check=one_group,
                             fix="must be a regular expression with one group capturing the score, e.g. "
                                 "'Score:\\s*(\\d+)'"),
    "max_score": Setting(int, 5, "the rubric's highest score"),
    "max_failure_rate": Setting(float, 0.5, "more unparseable judgements than this fails the stage",
                                check=lambda v: 0 <= v <= 1, fix="is a fraction; use a value in [0, 1]"),
    "batch_size": Setting(int, 512, "sequences per forward pass"),
    "shard_size": Setting(int, 512, "responses per resumable shard"),
    "seed": Setting(int, 0, "sampling seed"),
}


@declaration
def judge_model(ctx: Context) -> tuple[str, bool]:
    """(the judge's model reference, whether it is a directory DVC hashes)."""
    source = ctx.settings["judge"]["source"]
    if source == "self":
        return ctx.policy, ctx.policy_is_dep
    if source == "openai":  # a server: its endpoint and model name are params
        return "openai", False
    return source, Path(ctx.project, source).is_dir()


@declaration
def reads_probabilities(settings: dict, pipeline: list[str]) -> bool:
    """Whether an iteration reads a judge's token probabilities (a prefilled `Score: ` or `Winner: `)."""
    return settings["judge"]["mode"] != "generate" or ("metajudge" in pipeline and settings["metajudge"]["mode"] == "expected")


@declaration
def check(settings: dict, problems, top: dict) -> None:
    """top: the loop's backend, chat_template and this iteration's pipeline. An OpenAI-compatible judge needs its endpoint and model, and a key only by the name of an
    environment variable; modes other than generate read a local model's token probabilities."""
    from selfimprove.backends.config import check_key_env

    judge, path = settings["judge"], ("stages", "judge")
    if judge["source"] == "openai":
        for key, example in (("endpoint", "http://localhost:8000/v1"), ("api_model", "meta-llama/Llama-3.1-70B-Instruct")):
            if not judge[key]:
                problems.add(path + (key,), f"judge.source openai needs judge.{key}, e.g. {example}")
        check_key_env(judge["api_key_env"], path + ("api_key_env",), problems)
        if judge["mode"] != "generate":
            problems.add(path + ("mode",), f"{judge['mode']} reads a local model's token probabilities; with "
                         "judge.source openai use mode generate")
    if reads_probabilities(settings, top["pipeline"]):
        if top["backend"] == "openai":
            problems.add(("backend",), "openai cannot read token probabilities, which judge.mode expected / "
                         "generate_then_expected and metajudge.mode expected need; use mode generate, or backend hf or vllm")
        if top["chat_template"]:
            problems.add(("chat_template",), "probability read-outs (judge.mode expected, generate_then_expected, "
                         "metajudge.mode expected) extend the raw prompt; set chat_template: false and put the chat "
                         "format in judge.prompt_template and data.prompt_template")


@declaration
def node(ctx: Context) -> dict:
    model, model_is_dep = judge_model(ctx)
    out = ctx.outputs
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=model, samples=ctx.inputs["samples"], out=out["scores"],
                                           stats=out["judge_stats"]),
                    deps=[ctx.inputs["samples"]] + ([model] if model_is_dep else []),
                    params=[ctx.section("judge")] + ctx.revision_keys(model) + ctx.backend_keys,
                    outs=[out["scores"]], metrics=[out["judge_stats"]])


STAGE = Stage("judge", SETTINGS, node=node, reads=("samples",), writes={"scores": "judgements.jsonl",
                                                                       "judge_stats": "judge.json"},
              included=lambda settings: needs(settings) == "scores", check=check,
              plugins=lambda ctx: [("backend", ctx.backend)]
              + ([("module", OPENAI_CLIENT)] if ctx.settings["judge"]["source"] == "openai" else []),
              metrics=(Stage.Metric("judge_sample_agreement", "higher", order=260,
                                    help="the judge's verdicts on this iteration's samples agreeing with gold"),
                       Stage.Metric("judge_parse_failure_rate", "lower", order=270, help="judgements with no score"),
                       Stage.Metric("judge_tie_rate", "lower", order=280,
                                    help="prompts whose responses all get one mean score"),
                       Stage.Metric("judge_mean_score", order=290, help="mean parsed score"),
                       Stage.Metric("judge_score_mass", "higher", order=300,
                                    help="mode expected: the next-token mass on score digits"),
                       Stage.Metric("judge_score_*", help="the score histogram: judgements per score"),
                       Stage.Metric("judge_cost*", "lower", role="cost", help="the backend's API cost (stop: budget)")))


if __name__ == "__main__":
    stage_main(main)
