"""`selfimprove show RUN@K`: an iteration's prompts, each with its samples, what scored them, the pair it
produced or why it produced none.

    selfimprove show scpo@1                          # a page of prompts
    selfimprove show scpo@1 --only dropped --limit 3 # prompts without a pair, and why
    selfimprove show scpo@1..3 --id 17               # one prompt across iterations
    selfimprove show scpo@1 --json                   # the same, for scripts

What an iteration holds is read from the files its stages wrote, each stage's files as it declares them
(Stage.writes), each file through the view of its artifact (selfimprove.core.registry.VIEWS,
selfimprove.results.views), joined by the records' `id`. Nothing here names a stage, and nothing imports
torch. The page itself is drawn by show_page.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from selfimprove.core import registry
from selfimprove.core.errors import UserError
from selfimprove.results.views import Iteration, Source

REFERENCE = re.compile(r"^(?P<run>[A-Za-z0-9][\w.-]*)(?:@(?P<first>\d+|best)(?:\.\.(?P<last>\d+))?)?$")
ONLY = {  # --only: which prompts a page keeps
    "pairs": lambda item: any(entry["trained"] for entry in item["pairs"]),
    "dropped": lambda item: not any(entry["trained"] for entry in item["pairs"]),
    "wrong": lambda item: item["wrong"] is True,
}
SORTS = {  # --sort: key, and whether larger comes first
    "id": (lambda item: _id_key(item["id"]), False),
    "margin": (lambda item: max((e["margin"] for e in item["pairs"] if e["trained"] and e["margin"] is not None),
                                default=None), True),
    "length": (lambda item: sum(len(s["text"]) for s in item["samples"]) / max(1, len(item["samples"])), True),
}


def iterations(project: Path, reference: str) -> tuple[str, list[int]]:
    """(run, iterations) of RUN@K, RUN@K..L, RUN@best or RUN (its last iteration that has prompts)."""
    match = REFERENCE.match(reference)
    if not match:
        raise UserError(f"{reference}: expected RUN@K or RUN@K..L, e.g. scpo@1 or scpo@1..3")
    run = match["run"]
    ran = run_iterations(project, run)
    if match["first"] == "best":
        from selfimprove.results import best_iteration

        return run, [best_iteration(project, run)["iteration"]]
    if match["first"] is None:
        with_prompts = [k for k in ran if k > 0] or ran
        return run, [max(with_prompts)]
    first, last = int(match["first"]), int(match["last"] if match["last"] is not None else match["first"])
    if last < first:
        raise UserError(f"{reference}: a range goes up, e.g. {run}@{last}..{first}")
    missing = [k for k in range(first, last + 1) if k not in ran]
    if missing:
        said = f"iteration {missing[0]} has" if len(missing) == 1 else f"iterations {', '.join(map(str, missing))} have"
        raise UserError(f"{reference}: {said} not run; {run} has {_listed(run, ran)}")
    return run, list(range(first, last + 1))


def run_iterations(project: Path, run: str) -> list[int]:
    """The iterations of a run with a directory under runs/RUN; one line with the runs there are if none."""
    base = project / "runs" / run
    found = sorted(int(p.name[2:]) for p in base.glob("it*") if p.is_dir() and p.name[2:].isdigit())
    if not found:
        runs = sorted(p.name for p in (project / "runs").glob("*") if any(p.glob("it[0-9]*")))
        if base.is_dir():
            raise UserError(f"{run}: no iteration has run yet; `selfimprove run` it first")
        raise UserError(f"no run named {run!r} in {project / 'runs'}; "
                        + (registry.suggestion(run, runs) if runs else "no run has written anything there yet"))
    return found


def load(project: Path, run: str, k: int) -> Iteration:
    """Iteration k of a run: every file its stages wrote, folded into per-prompt items by their views."""
    directory = project / "runs" / run / f"it{k}"
    found = ran_stages(directory)
    settings = _settings(project, run, k, found)
    ran = in_pipeline_order(found, settings)
    it = Iteration(run, k, directory, [stage.name for stage in ran], settings)
    for stage in ran:
        stats = {key: value for name in stage.writes.values() if name.endswith(".json")
                 and (directory / name).is_file() for key, value in _json(directory / name).items()}
        for artifact, name in stage.writes.items():
            view = view_of(stage.name, artifact)
            if view is None:
                continue
            source = Source(stage.name, artifact, directory / name, stats)
            if source.path.is_file():
                view(it, read_records(source.path), source)
            elif hasattr(view, "missing"):
                view.missing(it, source)
    for finish in it.finishers:
        finish(it)
    return it


def view_of(stage: str, artifact: str):
    """The view of an artifact as this stage writes it ("stage.artifact"), else of the artifact; None for
    what has no per-prompt view (metrics files, models)."""
    for key in (f"{stage}.{artifact}", artifact):
        if key in registry.VIEWS:
            return registry.resolve("view", key)
    return None


def ran_stages(directory: Path) -> list:
    """The iteration stages whose files are in the directory, in pipeline order: a stage ran when a file only
    it writes is there (samples.jsonl is generate's or system2's: their stats files tell them apart)."""
    stages = [stage for stage in registry.stages() if stage.scope == "iteration"]
    writers: dict[str, int] = {}
    for stage in stages:
        for name in set(stage.writes.values()):
            writers[name] = writers.get(name, 0) + 1
    ran = []
    for stage in stages:
        own = [name for name in stage.writes.values() if writers[name] == 1] or list(stage.writes.values())
        if any((directory / name).exists() for name in own):
            ran.append(stage)
    claimed = {name for stage in ran for name in stage.writes.values()}
    for stage in stages:  # a shared file no stage claimed (its stats file gone): its first writer's
        unclaimed = [name for name in stage.writes.values() if name not in claimed and (directory / name).exists()]
        if stage not in ran and unclaimed:
            ran.append(stage)
            claimed |= set(stage.writes.values())
    return [stage for stage in stages if stage in ran]


def in_pipeline_order(stages: list, settings: dict) -> list:
    """The stages in the order they ran: a stage after those that make what it reads (system2's samples come
    before the votes on them though vote is registered first); a stage that reads and rewrites an artifact
    (filter, lift) after the one that made it; otherwise the registry's order."""
    def reads(stage) -> set:
        try:
            return set(stage.required(settings)) | set(stage.optional_reads)
        except Exception:  # noqa: BLE001 - a rule no longer registered: its reads are unknown
            return set(stage.optional_reads)

    makers = {stage.name: set(stage.writes) - reads(stage) for stage in stages}
    after = {stage.name: {other.name for other in stages if other is not stage and makers[other.name] & reads(stage)}
             for stage in stages}
    ordered, left = [], list(stages)
    while left:  # the first stage whose makers are placed (the first left, should they read each other)
        ready = next((stage for stage in left if after[stage.name] <= {s.name for s in ordered}), left[0])
        ordered.append(ready)
        left.remove(ready)
    return ordered


def read_records(path: Path) -> list[dict]:
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}:{number}: not a JSON line ({error.msg}); the stage that wrote it was "
                                    "cut short: `selfimprove run` the loop again to remake it") from None
                if isinstance(record, dict):  # a pair from a user's file may have no id: it joins nothing
                    records.append(record if "id" in record else {**record, "id": f"{path.name}:{number}"})
    return records


def _json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def _settings(project: Path, run: str, k: int, ran: list) -> dict:
    """Each stage's settings in iteration k as compiled into params.yaml, over the stage's defaults."""
    params_path = project / "params.yaml"
    params = (yaml.safe_load(params_path.read_text()) or {}) if params_path.is_file() else {}
    sections = ((params.get(run) or {}).get(f"it{k}") or {}) if isinstance(params.get(run), dict) else {}
    return {stage.name: {**stage.defaults(), **(sections.get(stage.name) or {})} for stage in ran}


def select(it: Iteration, prompt_id: str | None = None, search: str | None = None, only: str | None = None,
           sort: str = "id", reverse: bool = False) -> list[dict]:
    """The iteration's items that pass the filters, in the asked order."""
    items = list(it.items.values())
    if prompt_id is not None:
        items = [item for item in items if str(item["id"]) == prompt_id]
        if not items:
            raise UserError(f"{it.name}: no prompt with id {prompt_id!r}; {_ids(it, prompt_id)}")
    if search:
        needle = search.lower()
        items = [item for item in items if needle in _text_of(item).lower()]
    if only:
        items = [item for item in items if ONLY[only](item)]
    key, larger_first = SORTS[sort]
    present = [item for item in items if key(item) is not None]  # without a margin: last, either way
    return sorted(present, key=key, reverse=larger_first != reverse) + [item for item in items if key(item) is None]


def page_of(items: list, limit: int, page: int, what: str = "prompts") -> tuple[list, int]:
    """(the items of page `page`, the number of pages); a page past the last is one line."""
    pages = max(1, -(-len(items) // limit))
    if page > pages:
        raise UserError(f"page {page}: there {'is' if pages == 1 else 'are'} {pages} page(s) of {limit} {what} "
                        f"({len(items)} in all); use --page 1..{pages}")
    return items[(page - 1) * limit:page * limit], pages


def summary(it: Iteration) -> dict:
    """How the iteration's prompts fared: with a pair trained on, without, and the reasons (for the header)."""
    items = list(it.items.values())
    reasons: dict[str, int] = {}
    for item in items:
        if not ONLY["pairs"](item):
            dropped = [entry["dropped_by"] for entry in item["pairs"] if entry.get("dropped_by")]
            reason = (item["no_pair"] or {}).get("reason") or (f"dropped by {dropped[-1]}" if dropped else "no pair")
            reasons[reason] = reasons.get(reason, 0) + 1
    return {"prompts": len(items), "with_pair": sum(map(ONLY["pairs"], items)),
            "without_pair": len(items) - sum(map(ONLY["pairs"], items)), "reasons": reasons,
            "pair_stages": list(it.pair_writers)}


def as_json(it: Iteration, shown: list[dict], matching: int, page: int, pages: int) -> dict:
    return {"run": it.run, "iteration": it.k, "stages": it.stages, "summary": summary(it), "matching": matching,
            "page": page, "pages": pages, "prompts": shown,
            "heldout": {"answers": len(it.heldout)} if it.heldout is not None else {"note": it.heldout_note or None}}


def _text_of(item: dict) -> str:
    texts = [str(item.get(key) or "") for key in ("question", "prompt", "gold")]
    texts += [row["text"] for row in item["samples"]]
    texts += [str(entry.get(side) or "") for entry in item["pairs"] for side in ("chosen", "rejected", "prompt")]
    texts += [str(cell) for block in item["blocks"] for row in block["rows"] for cell in row]
    return "\n".join(texts)


def _ids(it: Iteration, wanted: str) -> str:
    """What ids there are: their range where they are numbers, else the nearest one or a few of them."""
    ids = [str(item["id"]) for item in it.items.values()]
    if not ids:
        return "it has no prompts"
    if all(i.isdigit() for i in ids):
        return f"its ids run from {min(map(int, ids))} to {max(map(int, ids))} ({len(ids)} prompts)"
    hint = registry.suggestion(wanted, ids)
    return hint if hint.startswith("did you mean") or len(ids) <= 10 else f"its ids include {', '.join(ids[:10])}, ..."


def _id_key(value) -> tuple:
    return (0, value, "") if isinstance(value, int) else (1, 0, str(value))


def _listed(run: str, ran: list[int]) -> str:
    return "iterations " + ", ".join(f"{run}@{k}" for k in ran)


def show(project: Path, reference: str, console, echo, prompt_id: str | None = None, search: str | None = None,
         only: str | None = None, sort: str = "id", reverse: bool = False, limit: int = 5, page: int = 1,
         full: bool = False, judgements: bool = False, heldout: bool = False, json_out: bool = False) -> None:
    """The `show` command: a page of RUN@K's prompts, one prompt across RUN@K..L, or the held-out answers."""
    from selfimprove.results import show_page

    run, ks = iterations(project, reference)
    if len(ks) > 1:
        across(project, run, ks, prompt_id, console, echo, full, judgements, json_out)
        return
    it = load(project, run, ks[0])
    if heldout:
        rows = [r for r in it.heldout or [] if (prompt_id is None or str(r["id"]) == prompt_id)
                and (only != "wrong" or r.get("correct") is False)
                and (not search or search.lower() in f"{r['question']}\n{r['output']}".lower())]
        if it.heldout is None:
            note = it.heldout_note or f"{it.name}: no stage of it evaluates on a held-out set"
            if json_out:
                echo(json.dumps({"run": run, "iteration": it.k, "heldout": None, "note": note}, indent=2))
            else:
                console.print(note, markup=False)
            return
        shown, pages = page_of(rows, limit, page, "answers")
        if json_out:
            echo(json.dumps({"run": run, "iteration": it.k, "matching": len(rows), "page": page, "pages": pages,
                             "heldout": shown}, indent=2))
        else:
            show_page.heldout_page(console, it, shown, len(rows), page, pages, full)
        return
    if not it.items:
        with_prompts = [f"{run}@{k}" for k in run_iterations(project, run) if k > 0]
        raise UserError(f"{it.name} has no prompts (it ran {', '.join(it.stages) or 'nothing'}; iteration 0 evaluates "
                        f"the base model only); prompts are in {', '.join(with_prompts) or 'no iteration yet'}")
    matching = select(it, prompt_id, search, only, sort, reverse)
    shown, pages = page_of(matching, limit, page)
    if json_out:
        echo(json.dumps(as_json(it, shown, len(matching), page, pages), indent=2, default=str))
        return
    show_page.header(console, it, summary(it), len(matching), page, pages, limit)
    for item in shown:
        show_page.item_page(console, item, full, judgements)
    if it.heldout is not None:
        console.print(f"held-out: {len(it.heldout)} greedy answers of the evaluation; --heldout shows them",
                      style="dim", markup=False)
    elif it.heldout_note:
        console.print(f"held-out: {it.heldout_note.split(': ', 1)[-1]}", style="dim", markup=False)


def across(project: Path, run: str, ks: list[int], prompt_id: str | None, console, echo, full: bool,
           judgements: bool, json_out: bool) -> None:
    """One prompt in each iteration of a range (the same data prompt, sampled by each iteration's model)."""
    from selfimprove.results import show_page

    if prompt_id is None:
        raise UserError(f"{run}@{ks[0]}..{ks[-1]}: a range shows one prompt across iterations; add --id ID "
                        f"(or show one iteration, e.g. {run}@{ks[0]})")
    found = {k: load(project, run, k) for k in ks}
    if not any(prompt_id in it.items for it in found.values()):
        raise UserError(f"{run}@{ks[0]}..{ks[-1]}: no prompt with id {prompt_id!r} in any of them; "
                        f"{_ids(found[ks[-1]], prompt_id)}")
    if json_out:
        echo(json.dumps({"run": run, "id": prompt_id, "iterations": [
            {"iteration": k, "prompt": it.items.get(prompt_id)} for k, it in found.items()]}, indent=2, default=str))
        return
    for k, it in found.items():
        if prompt_id in it.items:
            show_page.item_page(console, it.items[prompt_id], full, judgements, title=f"{it.name}, prompt {prompt_id}")
        else:
            console.rule(f"{it.name}", align="left", style="dim")
            console.print(f"no prompt {prompt_id} in {it.name}", markup=False)
