"""How the records a stage writes read per prompt, for `selfimprove show` (selfimprove.results.show).

    selfimprove show scpo@1 --id 17

A view is a function (iteration, records, source) that folds the records of one file a stage wrote into
the iteration's prompts (Iteration.items, joined by the records' `id`): a sample's answer, votes or
score goes into its row, a prompt's vote count or contrast pair into its facts or blocks. Views are named
in selfimprove.core.registry.VIEWS by the artifact a stage writes (Stage.writes), so `show` knows no
stage by name: a stage with a new artifact adds a view. The pair views are in pair_views.py.

An item is plain data (what `show --json` prints): id, question, prompt, gold; samples (each: sample,
text, extra, fields {column: value}, and judgements or steps where a stage wrote them); facts
([label, text] lines); blocks ({title, rows, judgements}); pairs and no_pair (pair_views.py); wrong
(whether what the loop prefers contradicts the gold answer; None without one).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from selfimprove.tasks.answers import same_answer


@dataclass
class Source:
    """One file a stage wrote: the stage, the artifact's name in its writes, the path, and the figures
    of the stage's metrics files (its .json writes, merged)."""

    stage: str
    artifact: str
    path: Path
    stats: dict = field(default_factory=dict)


@dataclass
class Iteration:
    """One iteration of a run as `show` reads it. settings: the stages' settings in this iteration
    (defaults filled); stages: those that ran, in pipeline order; items: str(id) -> a prompt's item;
    records: artifact -> str(id) -> the records of the latest file of that artifact (what a later stage
    read); heldout: evaluate's per-problem answers, or None with heldout_note saying why there are none;
    finishers: what views run once every file is folded in (the pairs' final status)."""

    run: str
    k: int
    directory: Path
    stages: list[str]
    settings: dict
    items: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)
    heldout: list | None = None
    heldout_note: str = ""
    pair_writers: list = field(default_factory=list)
    finishers: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.run}@{self.k}"

    def item(self, record: dict, fill: bool = True) -> dict:
        """The item of the record's prompt, made on first sight; fill: take its question, prompt, gold and
        solution where the item has none yet (not from records whose `prompt` is another prompt: a judge's)."""
        key = str(record["id"])
        item = self.items.get(key)
        if item is None:
            item = self.items[key] = {"id": record["id"], "question": None, "prompt": None, "gold": None,
                                      "samples": [], "facts": [], "blocks": [], "pairs": [], "no_pair": None,
                                      "wrong": None}
        if fill:
            for name in ("question", "prompt", "gold", "solution"):
                if item.get(name) is None and record.get(name) is not None:
                    item[name] = record[name]
            if item["question"] is None and item["prompt"] is not None:
                item["question"] = item["prompt"]
        return item

    def keep(self, artifact: str, records: list[dict]) -> None:
        """Keep the records by prompt: a later view (the pairs' reasons) reads what the stages read."""
        grouped = defaultdict(list)
        for record in records:
            grouped[str(record["id"])].append(record)
        self.records[artifact] = dict(grouped)


def sample_rows(item: dict, completions: list[str], extra: list | None = None) -> list[dict]:
    """The item's sample rows for a scorer record's completions (made from them where no samples file was
    read), in the record's order, which is the samples file's."""
    rows = item["samples"]
    for index in range(len(rows), len(completions)):
        rows.append({"sample": index, "text": completions[index], "extra": bool(extra and extra[index]), "fields": {}})
    return rows[:len(completions)]


def fact(item: dict, label: str, text: str) -> None:
    item["facts"].append([label, text])


def number(value) -> str:
    """A score or a weight, short: 4.67, 0.375, 5."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


# --- the views, one per artifact -------------------------------------------------------------------------

def prompts(it: Iteration, records: list[dict], source: Source) -> None:
    """Prompts a stage wrote for this iteration (Self-RIP's synthesize): no data file holds them."""
    for record in records:
        fact(it.item(record), "prompt", f"new: written by {source.stage} in this iteration")


def samples(it: Iteration, records: list[dict], source: Source) -> None:
    """The samples of each prompt, with what the sampler recorded: an extra (non-voting) draw, the
    temperature a head chose, log p, a System 2 pipeline's intermediate steps, the prompt's own fields."""
    for row in records:
        item = it.item(row)
        fields = {}
        if "temperature" in row:  # one per sample, or one per token (a token-level head): their mean
            value = row["temperature"]
            fields["temp"] = sum(value) / len(value) if isinstance(value, list) and value else value
        if "logprob" in row:
            fields["logp"] = row["logprob"]
        sample = {"sample": row.get("sample", len(item["samples"])), "text": row["completion"],
                  "extra": bool(row.get("extra")), "fields": fields}
        if row.get("system2_steps"):
            sample["steps"] = row["system2_steps"]
        item["samples"].append(sample)
        if len(item["samples"]) == 1:
            for key, value in row.items():
                if key.startswith("prompt_"):  # the data's own fields (RIP's miniature: prompt_bad)
                    fact(item, key.removeprefix("prompt_"), str(value))


def votes(it: Iteration, records: list[dict], source: Source) -> None:
    """Each sample's answer and the votes for it; the prompt's vote count and majority."""
    it.keep(source.artifact, records)
    for record in records:
        item = it.item(record)
        gold = record.get("gold")
        extra = record.get("extra") or [False] * len(record["completions"])
        for row, answer, is_extra in zip(sample_rows(item, record["completions"], extra), record["answers"], extra):
            row["fields"]["answer"] = answer
            row["fields"]["votes"] = None if is_extra else record["votes"].get(answer, 0) if answer is not None else 0
            if gold is not None:
                row["fields"]["right"] = same_answer(answer, gold)
        counted = sorted(record["votes"].items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{answer} ({count})" for answer, count in counted) or "no answer to read"
        majority = record["majority"]
        verdict = "" if gold is None or majority is None else " (right)" if same_answer(majority, gold) else " (wrong)"
        fact(item, f"votes (n={record['n']})", f"{shown}; majority {majority}{verdict}")
        if gold is not None and majority is not None:
            item["wrong"] = not same_answer(majority, gold)


def scores(it: Iteration, records: list[dict], source: Source) -> None:
    """Each response's mean score and its judgements (a judge's, a reward's, a diversity judge's records,
    which share one shape), and whether it is right where a gold answer exists."""
    it.keep(source.artifact, records)
    for record in records:
        item = it.item(record)
        rows = sample_rows(item, record["completions"])
        correct = record.get("correct") or [None] * len(rows)
        diversity = record.get("diversity")
        for i, row in enumerate(rows):
            fields = row["fields"]
            fields["score"] = record["mean_scores"][i]
            if len(record["scores"][i]) > 1:
                fields["scores"] = " ".join("-" if s is None else number(s) for s in record["scores"][i])
            if record.get("unsplittable", [False] * len(rows))[i]:
                fields["score"] = "unsplit"  # no response marker: the judge never saw it
            if correct[i] is not None:
                fields["right"] = correct[i]
            if diversity is not None:
                fields["div"] = diversity[i]
            if record["judgements"][i]:
                row["judgements"] = record["judgements"][i]
        if record.get("diversity_verdict"):
            item["blocks"].append({"title": f"diversity verdict ({source.stage})", "rows": [],
                                   "judgements": [record["diversity_verdict"]]})
        scored = [i for i, m in enumerate(record["mean_scores"]) if m is not None]
        if scored and correct[0] is not None:
            best = max(scored, key=lambda i: record["mean_scores"][i])
            item["wrong"] = not correct[best]


def contrast(it: Iteration, records: list[dict], source: Source) -> None:
    """A synthetic preference pair per prompt (Self-Taught Evaluator): the good response, and the answer
    to a modified instruction as the bad one."""
    it.keep(source.artifact, records)
    for record in records:
        item = it.item(record)
        rows = [["modified instruction", record["modified_instruction"]]]
        for side in ("good", "bad"):
            right = record.get(f"{side}_correct")
            rows.append([side + ("" if right is None else " (right)" if right else " (wrong)"), record[side]])
        item["blocks"].append({"title": f"contrast pair ({source.stage})", "rows": rows, "judgements": []})
    _none_made(it, records, source, "no contrast pair")


def pair_judgements(it: Iteration, records: list[dict], source: Source) -> None:
    """A judge's verdicts on a contrast pair, in each order, against the verdict the construction makes
    right; the judgements' text with --judgements."""
    it.keep(source.artifact, records)
    for order in records:
        item = it.item(order, fill=False)  # its prompt is the judge's, not the prompt's
        verdicts = order["verdicts"]
        right = sum(v == order["label"] for v in verdicts)
        title = (f"judged by {source.stage}, right verdict {order['label']}: "
                 f"{' '.join(v or '?' for v in verdicts)} ({right} of {len(verdicts)} right)")
        item["blocks"].append({"title": title, "rows": [], "judgements": order["judgements"]})


def heldout(it: Iteration, records: list[dict], source: Source) -> None:
    """The greedy answers of the held-out evaluation, per problem (another set of prompts than training's)."""
    it.heldout = [{"id": r["id"], "question": r["question"], "output": r["output"],
                   **{key: r[key] for key in ("answer", "correct") if key in r}} for r in records]


def _no_heldout(it: Iteration, source: Source) -> None:
    figures = ", ".join(f"{key} {number(source.stats[key])}" for key in ("accuracy", "maj_at_k", "win_rate_vs_base")
                        if key in source.stats)
    problems = f" on {source.stats['problems']} problems" if "problems" in source.stats else ""
    it.heldout_note = (f"{it.name}: {source.stage} wrote no per-problem answers, only its metrics"
                       + (f" ({figures}{problems})" if figures else "") + f"; it writes its greedy answers "
                       f"({source.path.name}) from selfimprove 0.2.0 on: run the loop again to get them")


heldout.missing = _no_heldout  # what `show` says when the stage ran and wrote no such file


def _none_made(it: Iteration, records: list[dict], source: Source, what: str) -> None:
    """Prompts the stage read and made nothing of: its drop figures say why, for the whole iteration."""
    made = {str(r["id"]) for r in records}
    reasons = ", ".join(f"{value} {key.split('dropped_')[-1].replace('_', ' ')}" for key, value in source.stats.items()
                        if "dropped" in key and value)
    for key, item in it.items.items():
        if key not in made and item["samples"]:
            fact(item, what, f"{source.stage} made none of it" + (f" (this iteration: {reasons})" if reasons else ""))
