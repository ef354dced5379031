"""The terminal page of `selfimprove show` (selfimprove.results.show): readable at 80 columns, one line per
text unless --full, the judges' texts with --judgements. Every text a run wrote is printed as plain text,
never read as rich markup."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from selfimprove.results.views import Iteration, number

MARKS = {True: "✓", False: "✗", None: "-"}


def one_line(text, full: bool) -> str:
    """A text as one line (its line breaks shown as ⏎), or whole with --full."""
    text = "" if text is None else str(text)
    return text if full else " ⏎ ".join(part.strip() for part in text.splitlines() if part.strip()) or "''"


def cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return MARKS[value]
    return number(value)


def header(console, it: Iteration, summary: dict, matching: int, page: int, pages: int, limit: int) -> None:
    counted = sorted(summary["reasons"].items(), key=lambda kv: -kv[1])
    reasons = ", ".join(f"{count} {reason}" for reason, count in counted)
    pairs = (f"{summary['with_pair']} with a pair, {summary['without_pair']} without"
             + (f" ({reasons})" if reasons else "")) if summary["pair_stages"] else "no stage made pairs"
    console.print(Text(f"{it.name}: {summary['prompts']} prompts, {pairs}"), soft_wrap=False)
    console.print(Text(f"stages: {', '.join(it.stages)}", style="dim"))
    first = (page - 1) * limit + 1
    last = min(first + limit - 1, matching)
    where = f"prompts {first}-{last} of {matching} shown" if matching else "no prompt matches"
    more = f"; --page {page + 1} for more" if page < pages else ""
    console.print(Text(f"page {page} of {pages}: {where}{more}", style="dim"))


def item_page(console, item: dict, full: bool, judgements: bool, title: str | None = None) -> None:
    """One prompt: its question, facts, samples, blocks, and its pairs or why none."""
    console.rule(Text(title or f"prompt {item['id']}", style="bold"), align="left", style="dim")
    line = Text()
    line.append("question ", style="dim").append(one_line(item["question"], full))
    if item.get("gold") is not None:
        line.append("   gold ", style="dim").append(str(item["gold"]))
    console.print(line, no_wrap=not full, overflow="ellipsis")
    if item.get("prompt") and item["prompt"] != item["question"]:
        console.print(Text("prompt ", style="dim").append(one_line(item["prompt"], full)), no_wrap=not full,
                      overflow="ellipsis")
    for label, text in item["facts"]:
        console.print(labelled(f"{label}:", text, "dim"))
    if item["samples"]:
        samples_table(console, item["samples"], full, judgements)
    for block in item["blocks"]:
        console.print(Text(block["title"], style="dim"))
        rows = [(label, text) for label, text in block["rows"]]
        rows += [(f"judgement {i}", text) for i, text in enumerate(block["judgements"], 1)] if judgements else []
        if rows:
            console.print(grid(rows, full))
    for entry in item["pairs"]:
        pair_lines(console, item, entry, full)
    if item["no_pair"]:
        reason = item["no_pair"]
        console.print(labelled(f"no pair ({reason['by']}):", f"{reason['reason']}: {reason['detail']}", "yellow"))


def samples_table(console, samples: list[dict], full: bool, judgements: bool) -> None:
    columns = list(dict.fromkeys(key for row in samples for key in row["fields"]))
    table = Table(box=None, header_style="dim", pad_edge=False, padding=(0, 1), expand=True, show_edge=False)
    table.add_column("#", no_wrap=True, justify="right")
    for column in columns:
        table.add_column(column, no_wrap=True, justify="right" if column != "answer" else "left", max_width=14)
    table.add_column(f"samples ({len(samples)})", ratio=1, no_wrap=not full, overflow="fold" if full else "ellipsis")
    for row in samples:
        values = [cell(row["fields"].get(column)) for column in columns]
        table.add_row(f"{row['sample']}{'+' if row['extra'] else ''}", *values, Text(one_line(row["text"], full)))
    console.print(table)
    if any(row["extra"] for row in samples):
        console.print(Text("+ an extra sample: it supplies rejected answers and never votes", style="dim"))
    details = [(f"#{row['sample']} step {i}", text) for row in samples for i, text in enumerate(row.get("steps", []), 1)
               if full]
    details += [(f"#{row['sample']} judgement {i}", text) for row in samples
                for i, text in enumerate(row.get("judgements", []), 1) if judgements]
    if details:
        console.print(grid(details, full))


def pair_lines(console, item: dict, entry: dict, full: bool) -> None:
    sft = entry["rejected"] is None
    line = Text(f"{'example' if sft else 'pair'} by {entry['by']}", style="green" if entry["trained"] else "yellow")
    console.print(line.append(f", weight {number(entry['weight'])}" + (", trained on" if entry["trained"] else "")))
    if entry["dropped"]:
        console.print(labelled("  dropped:", entry["dropped"], "yellow"))
    if entry["why"]:
        console.print(labelled("  why:", "; ".join(entry["why"]), "dim"))
    rows = []
    if entry["prompt"] and entry["prompt"] not in (item.get("prompt"), item.get("question")):
        rows.append(("prompt", "", entry["prompt"]))
    sides = (("target", "chosen"),) if sft else (("chosen", "chosen"), ("rejected", "rejected"))
    for label, side in sides:
        # The sample's own mark first (a vote pair records only the chosen's; LIFT's swapped pairs keep the
        # original's), else what the pair records.
        index = entry[f"{side}_sample"]
        right = next((row["fields"].get("right") for row in item["samples"] if row["sample"] == index), None)
        right = entry["fields"].get(f"{side}_correct") if right is None else right
        where = f"#{index}" if index is not None else "gold solution" if entry[side] == item.get("solution") else ""
        rows.append((label, f"{where} {MARKS[right] if right is not None else ''}".strip(), entry[side]))
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True, style="dim")
    table.add_column(no_wrap=True)
    table.add_column(ratio=1, no_wrap=not full, overflow="fold" if full else "ellipsis")
    for label, where, text in rows:
        table.add_row(f"  {label}", where, Text(one_line(text, full)))
    console.print(table)


def labelled(label: str, text: str, style: str) -> Table:
    """A label and a sentence, the sentence wrapped under itself (a hanging indent), never cut."""
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True, style=style)
    table.add_column(ratio=1, overflow="fold")
    table.add_row(label, Text(text))
    return table


def grid(rows: list[tuple[str, str]], full: bool) -> Table:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True, style="dim")
    table.add_column(ratio=1, no_wrap=not full, overflow="fold" if full else "ellipsis")
    for label, text in rows:
        table.add_row(f"  {label}", Text(one_line(text, full)))
    return table


def heldout_page(console, it: Iteration, shown: list[dict], matching: int, page: int, pages: int, full: bool) -> None:
    console.print(Text(f"{it.name}: the held-out evaluation's greedy answers, {len(it.heldout)} problems"))
    more = f"; --page {page + 1} for more" if page < pages else ""
    console.print(Text(f"page {page} of {pages}: {len(shown)} of {matching} shown{more}", style="dim"))
    table = Table(box=None, header_style="dim", pad_edge=False, padding=(0, 1), expand=True, show_edge=False)
    table.add_column("id", no_wrap=True, justify="right")
    table.add_column("question", ratio=1, no_wrap=not full, overflow="fold" if full else "ellipsis")
    table.add_column("greedy answer", ratio=1, no_wrap=not full, overflow="fold" if full else "ellipsis")
    graded = any("correct" in row for row in shown)  # an evaluation set with gold answers
    if graded:
        table.add_column("gold", no_wrap=True)
        table.add_column("right", no_wrap=True, justify="right")
    for row in shown:
        cells = [str(row["id"]), Text(one_line(row["question"], full)), Text(one_line(row["output"], full))]
        if graded:
            cells += [Text(str(row.get("answer", ""))), "✓" if row.get("correct") else "✗"]
        table.add_row(*cells)
    console.print(table)
