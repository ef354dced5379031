"""`selfimprove push`, `pull` and `rm`: sharing a project through git and a DVC remote, and taking a run
out of it. Each imports the pipeline lazily: none of them loads torch."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.option("-r", "--remote", metavar="NAME", help="The DVC remote (default: the one `dvc remote add -d` set).")
def push(remote: str | None) -> None:
    """Send every stage's outputs to the DVC remote and stage for git what colleagues need from it
    (dvc.yaml, dvc.lock, params.yaml, metrics); then commit and git push."""
    from selfimprove.pipeline import sharing

    for line in sharing.push(Path.cwd(), remote):
        click.echo(line)


@click.command()
@click.option("-r", "--remote", metavar="NAME", help="The DVC remote (default: the one `dvc remote add -d` set).")
def pull(remote: str | None) -> None:
    """Fetch the outputs of every stage in dvc.lock from the DVC remote, then say what is done here."""
    from collections import Counter

    from selfimprove.pipeline import sharing
    from selfimprove.pipeline.status import stage_status

    click.echo(f"dvc pull: {sharing.pull(Path.cwd(), remote)}")
    states = Counter(row["state"] for row in stage_status(Path.cwd()))
    click.echo("stages: " + ", ".join(f"{count} {state}" for state, count in states.most_common()))


@click.command()
@click.argument("run_name", metavar="RUN")
@click.option("--outputs", is_flag=True, help="Also delete runs/RUN/ (the run's models, samples and metrics).")
@click.option("--yes", is_flag=True, help="Delete without asking (needed without a terminal).")
def rm(run_name: str, outputs: bool, yes: bool) -> None:
    """Remove a run's stages from dvc.yaml and its params from params.yaml (with --outputs, runs/RUN/ too)."""
    from selfimprove.core.errors import UserError
    from selfimprove.pipeline import remove, workspace

    project = Path.cwd()
    with workspace.workspace_lock(project, f"selfimprove rm {run_name}"):  # never under a running loop
        remove.check_known(project, run_name)  # before anyone is asked anything
        if outputs:
            click.echo(f"will delete {remove.output_summary(project, run_name)}")
        if outputs and not yes:
            if not sys.stdin.isatty():
                raise UserError(f"rm {run_name} --outputs: no terminal to confirm deleting "
                                f"runs/{run_name}/; pass --yes")
            if not click.confirm("delete it?", default=False):
                click.echo("nothing removed")
                return
        removed = remove.remove_run(project, run_name)
        click.echo(f"rm {run_name}: {len(removed)} stage(s) removed from dvc.yaml, its params from params.yaml")
        if outputs:
            deleted = remove.delete_outputs(project, run_name)
            click.echo(f"deleted {deleted}" if deleted else f"no {project / 'runs' / run_name} to delete")
        else:
            click.echo(f"outputs kept in runs/{run_name}/ (selfimprove rm {run_name} --outputs deletes them)")

