"""`newsdl submit`: the whole pipeline as a chain of batch jobs (SLURM or PBS).

Nothing heavy is imported here (no TensorFlow, no pandas): submitting is a login-node command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from newsdl import defaults
from newsdl.hpc.config import SCHEDULERS
from newsdl.tasks import TASKS


# Choices for --help and shell completion; run_submit refuses another name in one line (exit 2).
def _complete_scheduler(incomplete: str) -> list[str]:
    return [name for name in SCHEDULERS if name.startswith(incomplete)]


def submit(
    inputs: List[Path] = typer.Argument(..., help="Article files for `newsdl ingest`"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace folder, on storage every node sees "
                                             "[default: $NEWSDL_WORKSPACE or ./newsdl-work]"),
    images_root: Optional[Path] = typer.Option(None, help="Folder that image paths are relative to "
                                               "[default: the first input's folder]"),
    map: List[str] = typer.Option([], "--map", metavar="NEW=OLD",
                                  help="Passed to `newsdl ingest --map` (repeatable): take the article field NEW "
                                  "from the input's OLD; either side may be a dotted path: "
                                  "--map geo.lat=location.latitude"),
    scheduler: Optional[str] = typer.Option(None, metavar=f"[{'|'.join(SCHEDULERS)}]",
                                            autocompletion=_complete_scheduler,
                                            help=f"Batch system [default: the config's, else {defaults.SCHEDULER}]"),
    config: Optional[Path] = typer.Option(None, "--config", help="Cluster config (TOML): resources, modules, "
                                          "environment; see pipelines/cluster.example.toml"),
    shards: Optional[int] = typer.Option(None, help=f"Featurize array tasks [default: the config's, else "
                                         f"{defaults.SHARDS}]"),
    tasks: Optional[str] = typer.Option(None, help=f"Comma list of tasks to train and evaluate [default: the "
                                        f"config's, else {','.join(TASKS)}]"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the scripts to WORKSPACE/jobs/ and submit nothing"),
    wait: bool = typer.Option(False, "--wait", help="Stay until every job has ended, print each stage's state as "
                              "it changes; exit 1 naming the failed stage and its log"),
    poll: float = typer.Option(defaults.WAIT_POLL_SECONDS, help="With --wait: seconds between scheduler queries"),
) -> None:
    """Submit ingest -> featurize (job array) -> merge -> train/evaluate each task, chained by after-ok."""
    from newsdl.errors import UserError
    from newsdl.hpc.status import failure_report, wait as run_wait
    from newsdl.hpc.submit import submit as run_submit
    from newsdl.workspace import resolve

    if wait and dry_run:
        raise UserError("--wait with --dry-run: nothing is submitted, so there is nothing to wait for")
    ws = resolve(workspace)
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    records = run_submit(ws, inputs, images_root=images_root, scheduler=scheduler, config=config, shards=shards,
                         tasks=task_list, mapping=map, dry_run=dry_run)
    for r in records:
        typer.echo(json.dumps({k: r[k] for k in ("stage", "job_id", "script", "log")}))
    if dry_run:
        typer.echo(f"dry run: {len(records)} scripts in {ws / 'jobs'}, nothing submitted", err=True)
        return
    if not wait:
        return
    rows = run_wait(ws, poll=poll, echo=lambda line: typer.echo(line, err=True))
    report = failure_report(rows)
    if report:
        for line in report:
            typer.echo(f"newsdl submit: {line}", err=True)
        sys.exit(1)
    typer.echo(f"newsdl submit: all {len(rows)} jobs done", err=True)


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
