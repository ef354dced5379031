"""Meta-Rewarding's judge pairs: the model, as meta-judge, compares its own judgements of one response.

    python -m selfimprove.stages.metajudge --params params.yaml --run meta_rewarding --iteration 1 \
        --model runs/builtin/tiny-arith-judge --judgements runs/meta_rewarding/it1/judgements.jsonl \
        --out runs/meta_rewarding/it1/judge_pairs.jsonl --stats runs/meta_rewarding/it1/metajudge.json

Per prompt (Wu et al. 2024, section 3): take the response whose judgement scores vary most (where the
judge is least sure; a prompt whose judgements all agree is skipped), meta-judge every pair of its
judgements in both orders, weight wins by the position bias measured over the whole stage, fit Elo
(Bradley-Terry) strengths, and pair the highest against the lowest; a chosen judgement longer than
metajudge.max_judgement_length is dropped (the meta-judge favours long judgements). The pair's prompt is
the judge prompt, so DPO on it trains the model as a judge. Resumable in shards.
"""

from __future__ import annotations

import random
from pathlib import Path

from selfimprove.core import templates
from selfimprove.scoring import judging
from selfimprove.backends import open_backend
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.scoring.judging import one_group
from selfimprove.scoring.judge_scores import winner_probabilities
from selfimprove.models import model_identity
from selfimprove.stages.shards import discard, fingerprint, run_in_shards
from selfimprove.stages._io import (iteration_stage_args, read_jsonl, read_section, revision_for, stage_main,
                                    write_json, write_jsonl)


def most_uncertain(record: dict) -> int | None:
    """The response whose parsed judgement scores have the highest variance; None if none varies."""
    best, best_variance = None, 0.0
    for index, scores in enumerate(record["scores"]):
        parsed = [s for s in scores if s is not None]
        if len(parsed) < 2:
            continue
        mean = sum(parsed) / len(parsed)
        variance = sum((s - mean) ** 2 for s in parsed) / len(parsed)
        if variance > best_variance:
            best, best_variance = index, variance
    return best


def comparisons(records: list[dict], template: str) -> list[dict]:
    """Every ordered pair (m, n), m != n, of the parsed judgements of each prompt's most uncertain response."""
    items = []
    for record in records:
        index = most_uncertain(record)
        if index is None:
            continue
        texts, scores = record["judgements"][index], record["scores"][index]
        usable = [j for j, s in enumerate(scores) if s is not None]
        for m in usable:
            for n in usable:
                if m != n:
                    prompt = template.format(question=record["question"], response=record["responses"][index],
                                             judgement_a=texts[m], judgement_b=texts[n],
                                             score_a=scores[m], score_b=scores[n])
                    items.append({"id": record["id"], "response": index, "first": m, "second": n, "prompt": prompt})
    return items


def judge_pairs(records: list[dict], battles: list[dict], judge_template: str, settings: dict,
                seed: int = 0) -> tuple[list[dict], dict]:
    """Elo over each prompt's battles; (judge pairs, statistics)."""
    rng = random.Random(seed)
    weights = judging.position_weights(battles)
    by_prompt: dict[int, list[dict]] = {}
    for battle in battles:
        by_prompt.setdefault(battle["id"], []).append(battle)
    records_by_id = {r["id"]: r for r in records}
    pairs, too_long = [], 0
    for prompt_id, prompt_battles in sorted(by_prompt.items()):
        record = records_by_id[prompt_id]
        index = prompt_battles[0]["response"]
        texts = record["judgements"][index]
        strengths = judging.elo(judging.battle_scores(prompt_battles, len(texts), weights))
        used = sorted({b["first"] for b in prompt_battles})
        high = max(strengths[j] for j in used)
        low = min(strengths[j] for j in used)
        if high - low < 1e-9:
            continue  # no judgement beat another
        chosen = rng.choice([j for j in used if strengths[j] == high])
        rejected = rng.choice([j for j in used if strengths[j] == low])
        if len(texts[chosen]) > settings["max_judgement_length"]:
            too_long += 1
            continue
        scores = record["scores"][index]
        correct = (record.get("correct") or [None] * len(record["scores"]))[index]
        pairs.append({"id": prompt_id, "source": "meta",
                      "prompt": judge_template.format(question=record["question"], response=record["responses"][index]),
                      "chosen": texts[chosen], "rejected": texts[rejected], "weight": 1.0,
                      "chosen_score": scores[chosen], "rejected_score": scores[rejected],
                      # Statistics only: does the preferred judgement's verdict match the truth?
                      "chosen_verdict_right": None if correct is None else
                      judging.says_right(scores[chosen], settings["max_score"]) == correct})
    first_wins = sum(b["winner"] == "A" for b in battles)
    second_wins = sum(b["winner"] == "B" for b in battles)
    checked = [p for p in pairs if p["chosen_verdict_right"] is not None]
    stats = {
        "meta_prompts": len(by_prompt),
        "meta_battles": len(battles),
        "meta_unparsed_rate": sum(b["winner"] is None for b in battles) / len(battles) if battles else 0.0,
        "meta_first_position_win_rate": first_wins / (first_wins + second_wins) if first_wins + second_wins else 0.0,
        "meta_position_weight_first": weights[0],
        "meta_position_weight_second": weights[1],
        "meta_higher_score_win_rate": _higher_score_win_rate(battles),
        "judge_pairs": len(pairs),
        "judge_pairs_dropped_too_long": too_long,
    }
    if checked:
        stats["judge_pairs_chosen_right"] = sum(p["chosen_verdict_right"] for p in checked) / len(checked)
    return pairs, stats


def _higher_score_win_rate(battles: list[dict]) -> float:
    """How often the meta-judge picks the higher-scoring judgement (the paper's score bias, ~98% by
    iteration 2); battles between equal scores do not count."""
    decided = [b for b in battles if b["winner"] and b["score_first"] != b["score_second"]]
    higher = sum((b["winner"] == "A") == (b["score_first"] > b["score_second"]) for b in decided)
    return higher / len(decided) if decided else 0.0


def metajudge(settings: dict, judge_settings: dict, records: list[dict], model_ref: str, out: str | Path,
              revision: str | None = None, generate_verdicts=None, seed: int = 0, backend=None) -> tuple[list[dict], dict]:
    """Run the meta-judge over the judgements; return (judge pairs, statistics). generate_verdicts(prompts,
    shard_index, on_done) -> one text per prompt may be given (tests script the meta-judge). In mode
    expected the verdict is the likelier of `A` and `B` right after `Winner: ` (no text is written)."""
    out = Path(out)
    template = judging.wrap(templates.load(settings["template"], alternatives=judging.META_PLACEHOLDERS),
                            judge_settings)
    items = comparisons(records, template)
    if generate_verdicts is None:
        backend = backend or open_backend({}, model_ref, revision)
        generate_verdicts = (_likelier_verdicts(settings, backend) if settings["mode"] == "expected"
                             else _model_meta_judge(settings, backend))

    def work(shard: list[dict], index: int, on_done) -> list[dict]:
        texts = generate_verdicts([item["prompt"] for item in shard], index, on_done)
        return [{**item, "verdict": text} for item, text in zip(shard, texts)]

    key = fingerprint(settings, items, model_identity(model_ref, revision))
    judged, _ = run_in_shards("metajudge", items, settings["shard_size"], out, key, work, unit="comparisons")
    if backend:
        backend.close()
    scores = {r["id"]: r["scores"] for r in records}
    battles = [{"id": j["id"], "response": j["response"], "first": j["first"], "second": j["second"],
                "winner": judging.parse_verdict(j["verdict"], settings["winner_pattern"]),
                "score_first": scores[j["id"]][j["response"]][j["first"]],
                "score_second": scores[j["id"]][j["response"]][j["second"]]} for j in judged]
    pairs, stats = judge_pairs(records, battles, templates.load(judge_settings["template"], ("question", "response")),
                               dict(settings, max_score=judge_settings["max_score"]), seed)
    write_jsonl(out, pairs)
    discard(out)
    return pairs, stats


def _likelier_verdicts(settings: dict, backend):
    """Verdicts read from the probabilities of `A` and `B` after the prompt and `Winner: `, written out
    with both probabilities so the stage output shows how sure the meta-judge was."""

    def generate_verdicts(prompts: list[str], shard_index: int, on_done) -> list[str]:
        probs = winner_probabilities(backend, prompts, settings["batch_size"], on_done)
        return [f"p(A)={a:.4f} p(B)={b:.4f} Winner: {'A' if a > b else 'B' if b > a else 'tie'}" for a, b in probs]

    return generate_verdicts


def _model_meta_judge(settings: dict, backend):
    def generate_verdicts(prompts: list[str], shard_index: int, on_done) -> list[str]:
        texts = backend.sample(prompts, 1, settings["temperature"], settings["top_p"], settings["max_new_tokens"],
                               settings["batch_size"], settings["seed"] * 100003 + shard_index, on_batch=on_done)
        return [t[0] for t in texts]

    return generate_verdicts


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "judgements", "out", "stats")
    run = read_section(args.params, args.run)
    stages = run[f"it{args.iteration}"]
    _, stats = metajudge(stages["metajudge"], stages["judge"], read_jsonl(args.judgements), args.model, args.out,
                         revision_for(run, args.model), seed=stages["metajudge"]["seed"] * 1000 + args.iteration,
                         backend=open_backend(run, args.model, revision_for(run, args.model)))
    write_json(args.stats, stats)
    print(f"metajudge: {stats['judge_pairs']} judge pairs from {stats['meta_battles']} comparisons on "
          f"{stats['meta_prompts']} prompts; first position wins {stats['meta_first_position_win_rate']:.1%}")


SETTINGS = {
    "template": templates.setting("meta", "meta, tiny-arith-meta", "the meta-judge prompt, comparing two judgements",
                                  alternatives=judging.META_PLACEHOLDERS),
    "mode": Setting(str, "generate", "generate: parse `Winner: A|B`; expected: the likelier of A and B after "
                    "`Winner: `", choices=("generate", "expected")),
    "temperature": Setting(float, 0.0, "sampling temperature of the verdicts"),
    "top_p": Setting(float, 1.0, "nucleus sampling mass of the verdicts"),
    "max_new_tokens": Setting(int, 256, "longest verdict, in tokens"),
    "winner_pattern": Setting(str, r"Winner:\s*([AB])", "where the verdict is in the meta-judge's text",
                              check=lambda v: one_group(v), fix="must be a regular expression with one group "
                                                                "capturing A or B"),
    "max_judgement_length": Setting(int, 1100, "characters; longer chosen judgements are dropped"),
    "batch_size": Setting(int, 512, "sequences per forward pass"),
    "shard_size": Setting(int, 512, "comparisons per resumable shard"),
    "seed": Setting(int, 0, "sampling seed"),
}


@declaration
def check(settings: dict, problems, top: dict) -> None:
    """Mode expected writes no judgement text, which a meta-judge needs to compare."""
    if settings["judge"]["mode"] == "expected":
        problems.add(("stages", "judge", "mode"), "expected writes no judgements for the meta-judge to compare; "
                     "use generate or generate_then_expected, or leave the metajudge stage out of the pipeline")


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=ctx.policy, judgements=ctx.inputs["scores"],
                                           out=out["judge_pairs"], stats=out["metajudge_stats"]),
                    deps=[ctx.inputs["scores"]] + ([ctx.policy] if ctx.policy_is_dep else []),
                    params=[ctx.section("metajudge"), ctx.section("judge")] + ctx.revision_keys(ctx.policy)
                    + ctx.backend_keys, outs=[out["judge_pairs"]], metrics=[out["metajudge_stats"]])


STAGE = Stage("metajudge", SETTINGS, node=node, reads=("scores",),
              writes={"judge_pairs": "judge_pairs.jsonl", "metajudge_stats": "metajudge.json"},
              included=lambda settings: judged(settings) and settings["pairs"]["judge_pairs"], check=check,
              files=lambda ctx: [("metajudge", "template"), ("judge", "template")],
              plugins=lambda ctx: [("backend", ctx.backend)])


@declaration
def judged(settings: dict) -> bool:
    from selfimprove.scoring.rules import needs

    return needs(settings) == "scores"


if __name__ == "__main__":
    stage_main(main)
