"""What a task's folder (models/TASK/) holds, by name, for every module that reads or writes it.

Two stages write there, each with its own record: train (manifest.json: the model and what was
fitted) and evaluate (evaluate.json: the metrics and plots, keyed by the digest of train's record,
which holds the sha256 of the model and of every file fitted with it).

Every `newsdl train` run also has its own folder, runs/RUN/ (RUN: the UTC time it started,
20261201-233100, with -2, -3... on a collision), that keeps its files once a later run replaces
them: run.json (its identity and times), config.json, history.csv, model.keras and the fitted
files, then evaluate's metrics.json and plots; heads/HEAD/ (each head's checkpoints, for resume)
and logs/HEAD/ (TensorBoard). models/TASK/ holds the current run's files under the same names
(hard links where the file system allows), and config.json's "run" names it.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from newsdl import workspace

TRAIN_STAGE = "train"
EVALUATE_STAGE = "evaluate"
CONFIG = "config.json"  # the settings, what was fitted, and the training summary
MODEL = "model.keras"
HISTORY = "history.csv"
BOW = "bow.json"  # the TF-IDF vocabulary fitted on train
VOCAB = "vocab.json"  # caption's word list
CCA = "cca.npz"  # illustrate's CCA baseline
METRICS = "metrics.json"
EVALUATION = "evaluate.json"  # evaluate's stage record
RECALL_PLOT = "recall_at_k.png"
RUNS = "runs"  # one folder per training run
RUN_RECORD = "run.json"  # in runs/RUN/: the run's identity (settings, inputs), started, finished
HEADS = "heads"  # in runs/RUN/: each head's checkpoints, best epoch and outcome
LOGS = "logs"  # in runs/RUN/: TensorBoard scalars, one folder per head
RUN_ID = re.compile(r"^(\d{8})-(\d{6})(?:-(\d+))?$")
PLOT_SUFFIXES = (".png", ".pdf")


def run_folder(folder: Path, run: str) -> Path:
    return folder / RUNS / run


def head_folder(run_dir: Path, head: str) -> Path:
    return run_dir / HEADS / head


def log_folder(run_dir: Path, head: str) -> Path:
    return run_dir / LOGS / head


def run_key(run: str) -> tuple:
    """Sort key of run ids: by time, then by collision suffix (-10 after -9)."""
    m = RUN_ID.match(run)
    return (m.group(1), m.group(2), int(m.group(3) or 1)) if m else ("", "", 0)


def run_ids(folder: Path) -> list[str]:
    """The task's run ids, oldest first."""
    root = folder / RUNS
    found = [p.name for p in root.iterdir() if p.is_dir() and RUN_ID.match(p.name)] if root.is_dir() else []
    return sorted(found, key=run_key)


def current_run(folder: Path) -> str | None:
    """The id of the run whose files models/TASK/ holds (config.json's "run"), if any."""
    config = workspace.read_json(folder / CONFIG)
    return config.get("run") if isinstance(config, dict) else None


def new_run(folder: Path, identity: dict, when: datetime | None = None) -> str:
    """Claim a new run folder (its id from the UTC time, suffixed on a collision) and record the
    run's identity in it; the run's id."""
    when = when or datetime.now(timezone.utc)
    stamp = when.strftime("%Y%m%d-%H%M%S")
    (folder / RUNS).mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        run = stamp if n == 1 else f"{stamp}-{n}"
        try:
            os.mkdir(folder / RUNS / run)  # atomic: two runs never claim one folder
        except FileExistsError:
            continue
        workspace.write_json(folder / RUNS / run / RUN_RECORD, {"run": run, "identity": identity,
                                                                "started": workspace.now(), "finished": None})
        return run
    raise RuntimeError(f"{folder / RUNS}: no free run id for {stamp}")


def unfinished_run(folder: Path, identity: dict) -> str | None:
    """The newest run with this identity (same settings, same inputs) that never finished: a
    rerun after a kill resumes it in its own folder rather than starting another."""
    for run in reversed(run_ids(folder)):
        record = workspace.read_json(folder / RUNS / run / RUN_RECORD)
        if isinstance(record, dict) and record.get("identity") == identity and not record.get("finished"):
            return run
    return None


def finish_run(folder: Path, run: str, summary: dict) -> None:
    path = folder / RUNS / run / RUN_RECORD
    record = workspace.read_json(path) or {"run": run}
    workspace.write_json(path, {**record, "finished": workspace.now(), "summary": summary})


def archive(folder: Path, names: list[str], run_dir: Path) -> None:
    """Put the current files ``names`` of models/TASK/ into the run's folder too: hard links
    (every writer replaces a file by renaming a new one onto it, so a link keeps the run's
    version), a copy where the file system refuses links."""
    for name in names:
        src, dst = folder / name, run_dir / name
        if not src.is_file():
            continue
        with workspace.atomic_path(dst) as tmp:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)


def evaluation_files(folder: Path) -> list[str]:
    """What evaluate wrote into models/TASK/: the outputs its record names, metrics.json, and any
    plot (PNG/PDF; only evaluate writes them there)."""
    record = workspace.read_manifest(folder, EVALUATION) or {}
    names = set(record.get("outputs") or {}) | {METRICS}
    names |= {p.name for p in folder.glob("*") if p.suffix in PLOT_SUFFIXES and p.is_file()}
    return sorted(names)


def reset_for_training(folder: Path) -> None:
    """Mark the task folder unfinished before a training run replaces its files: the train record
    goes, and so do evaluate's record, metrics and plots, which are of the model being replaced
    (evaluate kept them in that model's run folder too)."""
    folder.mkdir(parents=True, exist_ok=True)
    workspace.clean_temporaries(folder)
    workspace.invalidate(folder)
    (folder / EVALUATION).unlink(missing_ok=True)
    for name in evaluation_files(folder):
        (folder / name).unlink(missing_ok=True)
    for old in (folder / RUNS).glob("*"):
        # A head's scratch from before runs had folders (runs/HEAD/): checkpoints nothing resumes now.
        if old.is_dir() and not RUN_ID.match(old.name) and (old / RUN_RECORD).is_file() and not (old / HEADS).exists():
            shutil.rmtree(old, ignore_errors=True)


def evaluated(folder: Path, inputs: list[dict], key: dict, force: bool) -> dict | None:
    """The stored metrics when evaluate computed them for this very model (``key``: train's record's
    digest and the options), the same upstream inputs, and its outputs are still the files it wrote."""
    import json
    import logging

    if force or not workspace.is_up_to_date(folder, inputs, key, record=EVALUATION):
        return None
    logging.getLogger("newsdl.tasks").info("metrics up to date in %s (use --force to recompute)", folder / METRICS)
    return json.loads((folder / METRICS).read_text(encoding="utf-8"))


def write_evaluation(folder: Path, metrics: dict, plots: list[str], inputs: list[dict], key: dict,
                     started: str, seconds: float) -> None:
    """metrics.json, then evaluate's record of it and the plots (written last: it marks them done)."""
    workspace.write_json(folder / METRICS, metrics)
    workspace.write_manifest(folder, EVALUATE_STAGE, inputs=inputs, config=key, counts={"test": metrics["n_test"]},
                             outputs=[METRICS, *plots], started=started, record=EVALUATION,
                             extra={"task": metrics["task"], "run": metrics.get("run"),
                                    "seconds": round(seconds, 1)})
    run = metrics.get("run")
    if run and run_folder(folder, run).is_dir():
        archive(folder, [METRICS, *plots, EVALUATION], run_folder(folder, run))
