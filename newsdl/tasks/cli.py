"""CLI commands of the task heads: `newsdl train`, `newsdl evaluate`, `newsdl predict`, and
`newsdl metrics show|diff` (the runs compared, newsdl/tasks/runs.py).

Nothing heavy is imported here: TensorFlow loads inside the commands, so `newsdl --help` stays fast.
TASK, --head, --distributed and --gallery are choices: --help and shell completion list them, and
a value outside them is a user error (exit 2, one line naming the choices), as every other one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from newsdl import defaults as td
from newsdl.errors import UserError
from newsdl.tasks import TASKS

# The choices of the options that have a fixed set (cluster.MODES and the predict gallery's,
# written out: importing cluster.py here would cost every `newsdl --help`).
HEADS = ("regress", "cells", "auto")
DISTRIBUTED = ("none", "slurm", "tf_config")
GALLERIES = ("input", "workspace")

_TASK_HELP = f"Task: {', '.join(TASKS)}"
_WS_HELP = "Workspace folder [default: $NEWSDL_WORKSPACE or ./newsdl-work]"


def _task(value: str) -> str:
    if value not in TASKS:
        raise UserError(f"TASK {value!r}: unknown; this version trains {', '.join(TASKS)}")
    return value


def _choice(option: str, choices: tuple):
    """A parser that accepts only ``choices``: anything else is a one-line user error (exit 2)
    rather than Typer's usage block; --help shows the choices as the metavar, and shell
    completion offers them (see _completion)."""

    def parse(value: str) -> str:
        if value not in choices:
            raise UserError(f"{option} {value}: choose one of {', '.join(choices)}")
        return value

    return parse


def _completion(choices: tuple):
    return lambda incomplete="": [c for c in choices if c.startswith(incomplete or "")]


def _metavar(choices: tuple) -> str:
    return "[" + "|".join(choices) + "]"


def _task_argument():
    return typer.Argument(..., help=_TASK_HELP, metavar="|".join(TASKS), parser=_task,
                          autocompletion=_completion(TASKS))


def _ws(path: Optional[Path]) -> Path:
    from newsdl.workspace import resolve

    return resolve(path)


def train(
    task: str = _task_argument(),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=_WS_HELP),
    features: Optional[str] = typer.Option(
        None, help=f"Comma list of inputs: {', '.join(td.FEATURES)} (gaz: geoloc only), or the groups "
        f"{', '.join(td.FEATURE_GROUPS)} [default: every one the workspace has]"),
    head: Optional[str] = typer.Option(None, help="geoloc only: regress, cells, or auto (both, keep the better on "
                                       "val mean km) [default: auto]", metavar=_metavar(HEADS),
                                       parser=_choice("--head", HEADS), autocompletion=_completion(HEADS)),
    epochs: Optional[int] = typer.Option(None, help="At most this many epochs (early stopping on val ends most runs "
                                         f"sooner) [default: {td.EPOCHS}; caption {td.CAPTION_EPOCHS}, illustrate "
                                         f"{td.ILLUSTRATE_EPOCHS}]"),
    batch_size: Optional[int] = typer.Option(None, help=f"Articles (caption, illustrate: images) per training step "
                                             f"[default: {td.BATCH_SIZE}; caption {td.CAPTION_BATCH}, illustrate "
                                             f"{td.ILLUSTRATE_BATCH}]"),
    lr: Optional[float] = typer.Option(None, help=f"Adam's learning rate [default: {td.LEARNING_RATE}; caption and "
                                       f"illustrate {td.MULTIMODAL_LR}]"),
    patience: Optional[int] = typer.Option(None, help="Epochs without a better val score before stopping "
                                           f"[default: {td.PATIENCE}; source {td.SOURCE_PATIENCE}; caption and "
                                           f"illustrate {td.MULTIMODAL_PATIENCE}]"),
    context: Optional[str] = typer.Option(None, help="caption only: none (the image alone) or article (the image "
                                          f"and the article's word2vec mean) [default: {td.CAPTION_CONTEXT}]"),
    beam: Optional[int] = typer.Option(None, help="caption only: beam width that evaluate and predict use unless "
                                       f"they say otherwise (1: greedy) [default: {td.CAPTION_BEAM}]"),
    seed: Optional[int] = typer.Option(None, help="Random seed: the same seed gives the same model on a CPU "
                                       "[default: 1234]"),
    force: bool = typer.Option(False, "--force", help="Retrain even if the model is up to date (a killed run resumes "
                               "without it)"),
    distributed: str = typer.Option("none", help="none: this process; slurm: one worker per task of the SLURM "
                                    "job step (`srun -n N ...`); tf_config: the workers that $TF_CONFIG names",
                                    metavar=_metavar(DISTRIBUTED), parser=_choice("--distributed", DISTRIBUTED),
                                    autocompletion=_completion(DISTRIBUTED)),
) -> None:
    """Train a task's model on WORKSPACE's features into WORKSPACE/models/TASK/."""
    from newsdl.tasks.train import train_task

    task = _task(task)
    s = train_task(_ws(workspace), task, features=features, force=force, distributed=distributed,
                   head=head, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, patience=patience,
                   context=context, beam=beam)
    if s.get("chief") is False:
        typer.echo(f"train {task}: worker done ({s.get('workers', '?')} workers); the chief writes the model")
        return
    typer.echo(train_line(task, s))


def train_line(task: str, s: dict) -> str:
    """train's last line: the run, the best val value and its epoch, and why training stopped."""
    state = "up to date, nothing done" if s.get("skipped") else "done"
    stop = f" ({s['stop']})" if s.get("stop") and not s.get("skipped") else ""
    run = f"run {s['run']}, " if s.get("run") else ""
    return (f"train {task} {state}: {run}head {s.get('head')}, features {','.join(s.get('features', []))}; "
            f"{s.get('n_train')} train / {s.get('n_val')} val; best {s.get('monitor')} {s.get('val_best')} at "
            f"epoch {s.get('best_epoch')} of {s.get('epochs_run')}{stop}; {s.get('seconds')} s -> {s.get('folder')}")


def evaluate(
    task: str = _task_argument(),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=_WS_HELP),
    force: bool = typer.Option(False, "--force", help="Recompute even if metrics.json is up to date"),
    beam: Optional[int] = typer.Option(None, help="caption only: beam width, 1 for greedy [default: the one "
                                       "train was given]"),
    pdf: bool = typer.Option(False, "--pdf", help="Also write each plot as PDF beside its PNG (vector figures "
                             "for papers)"),
) -> None:
    """Test metrics of the model and of every baseline, in one run: metrics.json, plots, a table."""
    from newsdl.tasks.evaluate import evaluate_task, format_table

    ws, task = _ws(workspace), _task(task)
    metrics = evaluate_task(ws, task, force=force, pdf=pdf, beam=beam)
    typer.echo(format_table(metrics))
    run = f" (run {metrics['run']}, also in runs/{metrics['run']}/)" if metrics.get("run") else ""
    typer.echo(f"-> {ws / 'models' / task / 'metrics.json'}{run}")


def predict(
    task: str = _task_argument(),
    input: Path = typer.Argument(..., help="New articles: .jsonl, .jsonl.gz, .json, .csv or .parquet (ingest's format)"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=_WS_HELP),
    out: Optional[Path] = typer.Option(None, help="Predictions file, .jsonl, .csv or .parquet; - writes JSON "
                                       "Lines to stdout [default: WORKSPACE/models/TASK/predictions/INPUT.jsonl]"),
    images_root: Optional[Path] = typer.Option(None, help="Folder that image paths are relative to "
                                               "[default: INPUT's folder]"),
    beam: Optional[int] = typer.Option(None, help="caption only: beam width, 1 for greedy [default: the one "
                                       "train was given]"),
    gallery: str = typer.Option("input", help="illustrate only: the images to rank for each article: input "
                                "(INPUT's own images) or workspace (the workspace's ingested images)",
                                metavar=_metavar(GALLERIES), parser=_choice("--gallery", GALLERIES),
                                autocompletion=_completion(GALLERIES)),
) -> None:
    """Predict TASK for new articles with the trained model (validated and featurized as the corpus was)."""
    from newsdl.tasks.predict import predict_task

    task = _task(task)
    # Only illustrate has a gallery; other tasks would refuse the keyword.
    own = {"gallery": gallery} if task == "illustrate" else {}
    r = predict_task(_ws(workspace), task, input, out=out, images_root=images_root, beam=beam, **own)
    rejected = f"; rejected {r['rejected']} records, {r['images_rejected']} images: {r['rejected_file']}" \
        if r["rejected_file"] else ""
    # With --out - the predictions are stdout; the summary must not mix into them.
    typer.echo(f"predict {task}: {r['predicted']} {r.get('unit', 'articles')} -> {r['out']}{rejected}",
               err=str(out) == "-")


metrics_app = typer.Typer(help="Compare training runs: every task's current metrics, or two runs side by side.",
                          no_args_is_help=True)


@metrics_app.command("show")
def metrics_show(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=_WS_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: {workspace, tasks: [...]}"),
) -> None:
    """Every task: its current run, the main metric, the model against the best baseline (with
    the paired bootstrap's 95% interval), and a flag when the metrics are missing or stale."""
    from newsdl.tasks import runs

    ws = _ws(workspace)
    if not ws.is_dir():
        raise UserError(f"-w {ws}: no such workspace folder")
    rows = runs.show(ws)
    if as_json:
        typer.echo(runs.show_json(ws, rows))
        return
    if not rows:
        typer.echo(f"no trained task in {ws / 'models'}")
        return
    _print_table(list(runs.SHOW_COLUMNS), [runs.show_cells(r) for r in rows])


@metrics_app.command("diff")
def metrics_diff(
    run_a: str = typer.Argument(..., metavar="RUN_A", help="The old run: TASK/RUN, a run id, TASK (its current "
                                "run), TASK~N (N runs before it) or a run folder"),
    run_b: str = typer.Argument(..., metavar="RUN_B", help="The new run, named the same ways"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=_WS_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: {old, new, metrics, params}"),
) -> None:
    """Two runs compared metric by metric (model and baselines: old, new, change), and the
    settings that differ between them."""
    from newsdl.tasks import runs

    d = runs.diff(_ws(workspace), run_a, run_b)
    if as_json:
        typer.echo(runs.diff_json(d))
        return
    metrics, params = runs.diff_tables(d)
    typer.echo(f"{d.a.label} -> {d.b.label}")
    _print_table(["metric", "old", "new", "change"], metrics)
    if params:
        typer.echo("")
        _print_table(["param", "old", "new"], params)
    else:
        typer.echo("same settings")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; plain aligned text in a pipe or a file."""
    from newsdl.tasks.runs import numeric_columns, plain_table

    if not sys.stdout.isatty():
        typer.echo(plain_table(header, rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for name, right in zip(header, numeric_columns(header, rows)):
        # Names and run ids are read whole; the wide text columns wrap instead.
        table.add_column(name, justify="right" if right else "left", no_wrap=name in ("task", "run"))
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add `train`, `evaluate` and `predict` to the main app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("predict")(predict)
    app.add_typer(metrics_app, name="metrics")
