"""CLI commands of the task heads: `newsdl train`, `newsdl evaluate`, `newsdl predict`.

Nothing heavy is imported here: TensorFlow loads inside the commands, so `newsdl --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from newsdl import defaults as td
from newsdl.errors import UserError
from newsdl.tasks import TASKS

_TASK_HELP = f"Task: {', '.join(TASKS)}"
_WS_HELP = "Workspace folder [default: $NEWSDL_WORKSPACE or ./newsdl-work]"


def _task(value: str) -> str:
    if value not in TASKS:
        raise UserError(f"TASK {value!r}: unknown; this version trains {', '.join(TASKS)}")
    return value


def _ws(path: Optional[Path]) -> Path:
    from newsdl.workspace import resolve

    return resolve(path)


def train(
    task: str = typer.Argument(..., help=_TASK_HELP, metavar="TASK"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=_WS_HELP),
    features: Optional[str] = typer.Option(
        None, help=f"Comma list of inputs: {', '.join(td.FEATURES)} (gaz: geoloc only), or the groups "
        f"{', '.join(td.FEATURE_GROUPS)} [default: every one the workspace has]"),
    head: Optional[str] = typer.Option(None, help="geoloc only: regress, cells, or auto (both, keep the better on "
                                       "val mean km) [default: auto]"),
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
    force: bool = typer.Option(False, help="Retrain even if the model is up to date (a killed run resumes "
                               "without it)"),
    distributed: str = typer.Option("none", help="none: this process; slurm: one worker per task of the SLURM "
                                    "job step (`srun -n N ...`); tf_config: the workers that $TF_CONFIG names"),
) -> None:
    """Train a task's model on WORKSPACE's features into WORKSPACE/models/TASK/."""
    from newsdl.tasks.train import train_task

    s = train_task(_ws(workspace), _task(task), features=features, force=force, distributed=distributed,
                   head=head, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, patience=patience,
                   context=context, beam=beam)
    if s.get("chief") is False:
        typer.echo(f"train {task}: worker done ({s.get('workers', '?')} workers); the chief writes the model")
        return
    state = "up to date, nothing done" if s.get("skipped") else "done"
    typer.echo(f"train {task} {state}: head {s.get('head')}, features {','.join(s.get('features', []))}; "
               f"{s.get('n_train')} train / {s.get('n_val')} val; best {s.get('monitor')} {s.get('val_best')} at "
               f"epoch {s.get('best_epoch')} of {s.get('epochs_run')}; {s.get('seconds')} s -> {s.get('folder')}")


def evaluate(
    task: str = typer.Argument(..., help=_TASK_HELP, metavar="TASK"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=_WS_HELP),
    force: bool = typer.Option(False, help="Recompute even if metrics.json is up to date"),
    beam: Optional[int] = typer.Option(None, help="caption only: beam width, 1 for greedy [default: the one "
                                       "train was given]"),
) -> None:
    """Test metrics of the model and of every baseline, in one run: metrics.json, plots, a table."""
    from newsdl.tasks.evaluate import evaluate_task, format_table

    ws = _ws(workspace)
    metrics = evaluate_task(ws, _task(task), force=force, beam=beam)
    typer.echo(format_table(metrics))
    typer.echo(f"-> {ws / 'models' / task / 'metrics.json'}")


def predict(
    task: str = typer.Argument(..., help=_TASK_HELP, metavar="TASK"),
    input: Path = typer.Argument(..., help="New articles: .jsonl, .jsonl.gz, .json, .csv or .parquet (ingest's format)"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=_WS_HELP),
    out: Optional[Path] = typer.Option(None, help="Predictions file, .jsonl or .parquet [default: "
                                       "WORKSPACE/models/TASK/predictions/INPUT.jsonl]"),
    images_root: Optional[Path] = typer.Option(None, help="Folder that image paths are relative to "
                                               "[default: INPUT's folder]"),
    beam: Optional[int] = typer.Option(None, help="caption only: beam width, 1 for greedy [default: the one "
                                       "train was given]"),
) -> None:
    """Predict TASK for new articles with the trained model (validated and featurized as the corpus was)."""
    from newsdl.tasks.predict import predict_task

    r = predict_task(_ws(workspace), _task(task), input, out=out, images_root=images_root, beam=beam)
    rejected = f"; rejected {r['rejected']} records, {r['images_rejected']} images: {r['rejected_file']}" \
        if r["rejected_file"] else ""
    typer.echo(f"predict {task}: {r['predicted']} {r.get('unit', 'articles')} -> {r['out']}{rejected}")


def register(app: typer.Typer) -> None:
    """Add `train`, `evaluate` and `predict` to the main app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("predict")(predict)
