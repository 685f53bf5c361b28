"""`newsdl train TASK`: train a task's model on the workspace's features, resumably and
deterministically, in one process or on several workers (--distributed); the same for every task.

DIR/models/TASK/ gets the chosen model.keras, config.json (the settings, what was fitted on train,
each head's val outcome, a summary), its history.csv, the task's fitted files (Task.save), the
TensorBoard scalars in logs/HEAD/, one folder per training run in runs/HEAD/ (docs/spec.md section
5), and manifest.json last. A task with several heads (geoloc --head auto) trains each in its own
run and keeps the better on its monitored val value. A killed run resumes from its last finished
epoch (loop.py); a run made with other settings or inputs starts afresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

from newsdl import workspace
from newsdl.tasks import get
from newsdl.tasks.layout import CONFIG, HISTORY, MODEL, TRAIN_STAGE, reset_for_training

log = logging.getLogger("newsdl.tasks")


def train_task(ws: Path, task: str, *, features=None, force: bool = False, distributed: str = "none",
               **options) -> dict:
    """Train TASK's model in workspace ``ws``; return a summary (folder, head, val outcome, ...).

    ``features``: a comma list or list of families (article tasks; None: all available).
    ``options``: epochs, batch_size, lr, seed, patience, and the task's own (head, context, beam);
    None means the default. ``distributed``: none, slurm or tf_config (cluster.py); on a worker
    that is not the chief the summary has ``"chief": False``. Up to date: returns at once."""
    from newsdl.tasks.cluster import check_environment, start

    check_environment(distributed)  # a usage mistake exits 2 before TensorFlow loads
    ws, t = Path(ws), get(task)
    s = t.settings(ws, features=features, **options)
    cluster = start(distributed)
    with contextlib.ExitStack() as stack:
        if cluster.chief:  # the chief alone writes the model folder, so it alone holds its lock
            stack.enter_context(workspace.stage_lock(ws / "models" / task, f"train {task}"))
        return _train(ws, t, s, cluster, force, distributed)


def _train(ws: Path, t, s: dict, cluster, force: bool, mode: str) -> dict:
    from newsdl.tasks.data import upstream

    folder = ws / "models" / t.name
    config = {"task": t.name, **s, **t.model_config()}
    inputs_meta = upstream(ws)
    if cluster.broadcast([float(not force and workspace.is_up_to_date(folder, inputs_meta, config))])[0]:
        log.info("%s: model up to date in %s (use --force to retrain)", t.name, folder)
        saved = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        return {**saved.get("summary", {}), "skipped": True, "chief": cluster.chief}

    started, t0 = workspace.now(), time.monotonic()
    if cluster.chief:
        reset_for_training(folder)
        if force:
            shutil.rmtree(folder / "runs", ignore_errors=True)
    data = t.load(ws, s)
    log.info("%s: %d train, %d val %s%s", t.name, len(data.rows["train"]), len(data.rows["val"]), t.unit,
             f"; {cluster.name}, global batch {s['batch_size']}" if cluster.name else "")
    identity = {"config": config, "inputs": [i["sha256"] for i in inputs_meta]}
    runs = {head: _run(t, data, s, head, folder, identity, cluster) for head in t.heads(s)}
    if not cluster.chief:
        cluster.barrier()  # the chief's writes: a worker exits when the job's outcome is known
        return {"task": t.name, "chief": False, "workers": cluster.workers}

    best = min(runs, key=lambda h: runs[h]["score"])
    if len(runs) > 1:
        log.info("%s: heads %s -> %s", t.name, ", ".join(f"{h} {r['monitor']} {r['val_best']:.4g}"
                                                         for h, r in runs.items()), best)
    run_dir = folder / "runs" / best
    for name, src in ((MODEL, run_dir / "best.keras"), (HISTORY, run_dir / "history.csv")):
        with workspace.atomic_path(folder / name) as tmp:
            shutil.copyfile(src, tmp)
    calibration = t.calibrate(data, t.load_model(run_dir / "best.keras"), s)
    if calibration:
        data.record["calibration"] = calibration
        log.info("%s: fitted on val after training: %s", t.name, calibration_text(calibration))
    written = t.save(folder, data) or []
    summary = {"task": t.name, "folder": str(folder), "head": best, **data.summary,
               "n_train": int(len(data.rows["train"])), "n_val": int(len(data.rows["val"])),
               **{k: runs[best][k] for k in ("monitor", "val_best", "best_epoch", "epochs_run")},
               "seconds": round(time.monotonic() - t0, 1), "workers": cluster.workers}
    workspace.write_json(folder / CONFIG, {**config, "head": best, "distributed": mode, "fitted": data.record,
                                           "heads": runs, "summary": summary})
    workspace.write_manifest(folder, TRAIN_STAGE, inputs=inputs_meta, config=config,
                             counts={"train": summary["n_train"], "val": summary["n_val"]},
                             outputs=[MODEL, CONFIG, HISTORY, *written], started=started,
                             extra={"task": t.name, "head": best, "workers": cluster.workers})
    cluster.barrier()
    return {**summary, "chief": True}


def _run(t, data, s: dict, head: str, folder: Path, identity: dict, cluster) -> dict | None:
    """Train one head to completion, or resume it; its outcome (on the chief)."""
    from newsdl.tasks import loop

    run_dir = folder / "runs" / head
    run_id = {**identity, "head": head}
    if cluster.chief:
        if workspace.read_json(run_dir / "run.json") != run_id:
            shutil.rmtree(run_dir, ignore_errors=True)  # another config's run: nothing to resume
        run_dir.mkdir(parents=True, exist_ok=True)
        workspace.clean_temporaries(run_dir)
        workspace.write_json(run_dir / "run.json", run_id)
    if cluster.broadcast([float((run_dir / "done.json").is_file())])[0]:
        log.info("%s/%s: already trained in %s", t.name, head, run_dir)
        return workspace.read_json(run_dir / "done.json") if cluster.chief else None
    loop.fit(t, data, s, head, run_dir, folder / "logs" / head, cluster)
    if not cluster.chief:
        return None
    done = {"head": head, **loop.outcome(t, run_dir)}
    workspace.write_json(run_dir / "done.json", done)
    return done


def calibration_text(calibration: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in calibration.items())
