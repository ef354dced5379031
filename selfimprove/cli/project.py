"""`selfimprove loops` and `selfimprove init`: the shipped loops, and a project of one's own from one."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
def loops() -> None:
    """List the shipped loops: the method, what it needs, its model (then: selfimprove init NAME DIR)."""
    from rich.console import Console
    from rich.table import Table

    from selfimprove.loop.shipped import names, shipped

    table = Table(highlight=False)
    table.add_column("loop", no_wrap=True)
    for column in ("method (paper)", "needs", "model"):
        table.add_column(column, overflow="fold")
    for name in names():
        loop = shipped(name)
        table.add_row(name, loop.method, "; ".join(loop.needs), loop.model.removeprefix("builtin:"))
    Console(highlight=False).print(table)
    click.echo("Start a project with one: selfimprove init NAME [DIR]")


@click.command()
@click.argument("loop_name", metavar="LOOP")
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite the loop file if the folder has one.")
def init(loop_name: str, directory: str, force: bool) -> None:
    """Write a shipped loop (and the files it names) into DIR, set up git and DVC, print the next command."""
    import shlex

    from selfimprove.pipeline.project import init as init_project

    loop, written, notes = init_project(loop_name, Path(directory), force)
    click.echo(f"wrote {written}: {loop.method}")
    for note in notes:
        click.echo(note)
    where = "" if Path(directory).resolve() == Path.cwd().resolve() else f"cd {shlex.quote(directory)} && "
    click.echo(f"next: {where}selfimprove run {written.name}")
