"""The `selfimprove` command. Thin and lazy: each command imports what it needs when it runs, so
`--help`, `validate`, `status` and `diff` never import torch.

    selfimprove run loops/scpo.yaml [--set iterations=4] [--from scpo@2]
    selfimprove validate loops/*.yaml
    selfimprove compile loops/scpo.yaml
    selfimprove status
    selfimprove metrics scpo
    selfimprove diff scpo@0 scpo@3 [--json]
    selfimprove show scpo@1 [--only dropped] [--id 17] [--json]
    selfimprove plot scpo irpo [--metric accuracy] [-o curves.png]
    selfimprove report scpo [-o scpo.html]
    selfimprove export scpo@best served/
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


def _console(stderr: bool = False):
    from rich.console import Console

    # markup off for user text is done per print; highlight off so numbers are not recoloured
    return Console(stderr=stderr, highlight=False)


def _abort(lines: list[str], code: int = 2) -> None:
    console = _console(stderr=True)
    for line in lines:
        console.print(f"error: {line}", markup=False, soft_wrap=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns UserError into one line per problem, and any other exception into one line with a hint;
    the traceback only with SELFIMPROVE_DEBUG=1."""

    def invoke(self, ctx):
        from selfimprove.core.errors import UserError, exception_text

        try:
            return super().invoke(ctx)
        except UserError as error:
            _abort(error.lines)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt as interrupt:  # Ctrl-C (SIGINT, 2), or SIGTERM/SIGHUP raised by `run` (signum)
            _abort(["interrupted"], 128 + getattr(interrupt, "signum", 2))
        except Exception as error:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("SELFIMPROVE_DEBUG"):
                raise
            _abort([f"internal error, a bug in selfimprove: {exception_text(error)} (run again with "
                    "SELFIMPROVE_DEBUG=1 for the traceback, and please report it)"], 1)


REPLACE_HELP = ("Replace a run of the same name that another loop file made, or that started from another "
                "model (without it, that is refused).")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="selfimprove")
def main() -> None:
    """Run self-improvement loops (ScPO, IRPO, ...) as cached, resumable DVC pipelines."""


@main.command()
@click.argument("loop_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a loop setting, e.g. --set iterations=4 --set generate.n=16.")
@click.option("--from", "start_from", metavar="RUN@K", help="Start from the model of iteration K of an earlier run "
              "(RUN@best: its best iteration).")
@click.option("--dry-run", is_flag=True, help="Print which stages would run and which are up to date, running "
              "nothing; it writes dvc.yaml and params.yaml as `compile` does, and changes nothing else.")
@click.option("--replace", is_flag=True, help=REPLACE_HELP)
def run(loop_file: str, overrides: tuple[str, ...], start_from: str | None, dry_run: bool, replace: bool) -> None:
    """Run a loop to its last iteration; run it again after a crash to resume."""
    if dry_run:
        from selfimprove.pipeline import dryrun

        sys.exit(dryrun.dry_run(loop_file, list(overrides), start_from, Path.cwd(), _console(), replace))
    from selfimprove.pipeline import runner

    sys.exit(runner.run(loop_file, list(overrides), start_from, Path.cwd(), _console(), replace))


@main.command(name="compile")
@click.argument("loop_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a loop setting.")
@click.option("--replace", is_flag=True, help=REPLACE_HELP)
def compile_(loop_file: str, overrides: tuple[str, ...], replace: bool) -> None:
    """Write the loop's stages into dvc.yaml and params.yaml without running them
    (then `dvc repro`, `dvc dag` and `dvc status` work on it natively)."""
    from selfimprove.pipeline import compiler, workspace
    from selfimprove import results
    from selfimprove.loop.loopfile import load_loop

    loop = load_loop(loop_file, list(overrides))
    loop.replace = replace
    if loop.start_from:
        loop.start_from = results.resolve_from(Path.cwd(), loop.start_from)
    with workspace.workspace_lock(Path.cwd(), f"selfimprove compile {loop_file}"):  # not under a running loop
        workspace.ensure_dvc(Path.cwd())  # so that `dvc repro` works at once, and DVC follows git (gitsetup)
        stages = compiler.write(Path.cwd(), loop)
    click.echo(f"dvc.yaml, params.yaml: {len(stages)} stage(s) for {loop_file}")


@main.command()
@click.argument("loop_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a loop setting, as run and compile take it (applied to every file).")
def validate(loop_files: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Check loop files; print every problem with file:line and how to fix it."""
    from selfimprove.loop.loopfile import load_loop
    from selfimprove.core.errors import UserError

    problems = []
    for path in loop_files:
        try:
            loop = load_loop(path, list(overrides), made_files=True)
            click.echo(f"{path}: ok ({loop.name}, {loop.iterations} iteration(s))")
            for note in loop.notes:
                click.echo(f"  note: {note}")
        except UserError as error:
            problems.extend(error.lines)
    if problems:
        _abort(problems)


@main.command(name="stages")
@click.argument("name", required=False)
def stages_(name: str | None) -> None:
    """List the stage library, or one stage's settings (from the stages' own declarations)."""
    from rich.table import Table

    from selfimprove.core.errors import UserError
    from selfimprove.core.registry import UnknownName, resolve, stages

    if name is None:
        rows = [(stage.name, "(depends on its settings)" if callable(stage.reads) else ", ".join(stage.reads),
                 ", ".join(stage.writes), _summary(sys.modules[stage.module].__doc__)) for stage in stages()]
        table = Table(title="stages", expand=True)  # expand: the summary takes the width the others leave
        # Cells wrap at words: each narrow column is as wide as its longest word (so a name is never cut),
        # the summary gets the rest.
        for i, column in enumerate(("stage", "reads", "writes")):
            table.add_column(column, width=max(len(word) for row in rows for word in row[i].split()))
        table.add_column("what it is", ratio=1, overflow="fold")
        for row in rows:
            table.add_row(*row)
        _console().print(table)
        return
    try:
        stage = resolve("stage", name)
    except UnknownName as error:
        raise UserError(f"stages {name}: {error}") from None
    table = Table(title=f"{name} settings (stages.{name} in a loop file)")
    for column in ("setting", "type", "default", "help"):
        table.add_column(column, overflow="fold")
    for key, setting in stage.settings.items():
        choices = f" ({' | '.join(map(str, setting.choices))})" if setting.choices else ""
        table.add_row(key, setting.type.__name__, repr(setting.default), setting.help + choices)
    _console().print(table)


def _summary(doc: str | None) -> str:
    """A stage module's first sentence: its first paragraph up to a full stop that ends a sentence (not
    the one of `et al.`), as one line (the docstring's own line breaks would cut it mid-sentence)."""
    import re

    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    return re.split(r"(?<!\bal)\.\s+(?=[A-Z])", paragraph, maxsplit=1)[0].rstrip(".") + "."


# One line under the status table explains each state shown (selfimprove.pipeline.status).
STATE_LEGEND = {
    "done": "outputs match their inputs",
    "done?": "recorded as done; DVC cannot check now (a run holds its lock): look again when it ends",
    "stale": "an input changed since it ran; selfimprove run redoes it",
    "not checked out": "done, outputs not here; selfimprove pull (dvc pull) fetches them, selfimprove run remakes them",
    "pending": "not run yet",
}


@main.command()
def status() -> None:
    """Show every stage of every compiled run: done, stale, not checked out or pending."""
    from rich.table import Table

    from selfimprove.pipeline.status import stage_status

    rows = stage_status(Path.cwd())
    table = Table(title="stages")
    for column in ("run", "iteration", "stage", "state"):
        table.add_column(column)
    colours = {"done": "green", "stale": "yellow", "pending": "dim", "not checked out": "cyan", "done?": "green"}
    for row in rows:
        state = row["state"]
        table.add_row(row["run"], "-" if row["iteration"] is None else str(row["iteration"]), row["stage"],
                      f"[{colours.get(state, 'white')}]{state}[/]")
    _console().print(table)
    shown = [state for state in STATE_LEGEND if state in {row["state"] for row in rows}]
    _console().print("; ".join(f"{state}: {STATE_LEGEND[state]}" for state in shown), markup=False, soft_wrap=True)
    import json

    for run in sorted({row["run"] for row in rows}):
        record = Path.cwd() / "runs" / run / "stop.json"
        if record.is_file():  # a stop rule ended the run (selfimprove.loop.stop); later iterations are not compiled
            _console().print(f"[yellow]{run}: {json.loads(record.read_text())['stopped']}[/yellow]", highlight=False)


@main.command()
@click.argument("run_name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def metrics(run_name: str, as_json: bool) -> None:
    """Show the metrics of every iteration of a run (iteration 0 is the base model)."""
    from selfimprove import results

    if as_json:
        import json

        click.echo(json.dumps(results.iteration_metrics(Path.cwd(), run_name), indent=2))
    else:
        results.print_metrics(Path.cwd(), run_name, _console())


@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def diff(a: str, b: str, as_json: bool) -> None:
    """Compare metrics of two iterations or runs: RUN@K or RUN (its last iteration)."""
    from selfimprove import results

    report = results.diff(Path.cwd(), a, b)
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{report['a']} -> {report['b']}")
    table.add_column("metric")
    table.add_column(report["a"], justify="right")
    table.add_column(report["b"], justify="right")
    table.add_column("delta", justify="right")
    table.add_column("95% intervals", justify="right")
    for row in report["metrics"]:
        intervals = ""
        if "ci_a" in row:  # a rate: its Wilson intervals, and whether the change is beyond them
            (a0, a1), (b0, b1) = row["ci_a"], row["ci_b"]
            intervals = f"[{a0:.3f}, {a1:.3f}] -> [{b0:.3f}, {b1:.3f}]" + (" separated" if row["separated"] else " overlap")
        table.add_row(row["metric"], results.fmt(row["a"]), results.fmt(row["b"]), results.fmt_delta(row["delta"]),
                      intervals)
    _console().print(table)


@main.command()
@click.argument("reference", metavar="RUN@K")
@click.option("--id", "prompt_id", metavar="ID", help="Only the prompt with this id; with RUN@K..L, that prompt in "
              "each iteration.")
@click.option("--search", metavar="TEXT", help="Only prompts whose question, samples or pairs contain TEXT (any case).")
@click.option("--only", type=click.Choice(["pairs", "dropped", "wrong"]), help="Only prompts with a pair trained on, "
              "without one (made none, or a later stage dropped it), or whose preferred answer is wrong by the gold one.")
@click.option("--sort", type=click.Choice(["id", "margin", "length"]), default="id", show_default=True,
              help="Order: by id, by the pair's margin (score gap, or vote gap / n), or by mean sample length; "
              "the larger first.")
@click.option("--reverse", is_flag=True, help="The other order.")
@click.option("--limit", type=click.IntRange(min=1), default=5, show_default=True, help="Prompts per page.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="Which page.")
@click.option("--full", is_flag=True, help="Whole texts, wrapped, instead of one line each (and System 2 steps).")
@click.option("--judgements", is_flag=True, help="Also the judges' texts (judgements, verdicts).")
@click.option("--heldout", is_flag=True, help="The held-out evaluation's greedy answers instead, where evaluate "
              "writes them.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (whole texts).")
def show(reference: str, prompt_id: str | None, search: str | None, only: str | None, sort: str, reverse: bool,
         limit: int, page: int, full: bool, judgements: bool, heldout: bool, as_json: bool) -> None:
    """Show an iteration's prompts (RUN@K), or one prompt across iterations (RUN@K..L --id ID): each
    prompt's samples with their votes or scores, the pair it made, or why it made none."""
    from selfimprove.results import show as showing

    showing.show(Path.cwd(), reference, _console(), click.echo, prompt_id, search, only, sort, reverse, limit, page,
                 full, judgements, heldout, as_json)


@main.command()
@click.argument("references", nargs=-1, required=True, metavar="RUN[@K]...")
@click.option("--metric", "metrics", multiple=True, metavar="M", help="A metric to draw (repeat for several); "
              "default: the headline metric and maj@k.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="The image file (default: RUN.png).")
def plot(references: tuple[str, ...], metrics: tuple[str, ...], out: str | None) -> None:
    """Draw metric curves across iterations for one or several runs, with 95% intervals for rates."""
    from selfimprove.results import plot as plotting

    target = Path(out or f"{references[0].split('@')[0]}.png")
    plotting.plot(Path.cwd(), list(references), list(metrics), target)
    click.echo(f"plot: {target}")


@main.command()
@click.argument("run_name", metavar="RUN")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="The HTML file (default: RUN.html).")
def report(run_name: str, out: str | None) -> None:
    """Write a run's report as one self-contained HTML page: metrics with 95% intervals and the best
    iteration, training curves, every stage's figures and costs, the settings, and a filterable table of
    prompts, samples and pairs. Each run also writes it as runs/RUN/report.html."""
    from selfimprove.results import report as reporting

    target, note = reporting.write(Path.cwd(), run_name, Path(out or f"{run_name}.html"))
    click.echo(f"report: {target}")
    if note:
        _console(stderr=True).print(f"note: {note}", markup=False, soft_wrap=True)


@main.command()
@click.argument("reference", metavar="RUN@K")
@click.argument("directory", type=click.Path(file_okay=False))
def export(reference: str, directory: str) -> None:
    """Write an iteration's model (RUN@K, RUN@best, RUN) as a plain model directory for serving:
    adapters merged; a temperature head goes in DIRECTORY/temperature_head beside its model."""
    from selfimprove.results import export as exporting
    from selfimprove import results

    name, _ = results.resolve(Path.cwd(), reference)
    run, k = name.split("@")
    model, revision = exporting.iteration_model(Path.cwd(), run, int(k))
    what = exporting.export(model, Path(directory), revision)
    click.echo(f"export: {name} ({model}) -> {directory}: {what}")


if __name__ == "__main__":
    main()


# Commands with modules of their own (imported when the CLI starts; each imports its heavy parts lazily).
from selfimprove.cli.project import init, loops  # noqa: E402

main.add_command(loops)
main.add_command(init)
from selfimprove.cli.share import pull, push, rm  # noqa: E402

main.add_command(push)
main.add_command(pull)
main.add_command(rm)
