"""`newsdl train TASK`: train a task's model on the workspace's features, resumably and
deterministically, in one process or on several workers (--distributed); the same for every task.

Each run gets its own folder, DIR/models/TASK/runs/RUN/ (layout.py, docs/spec.md section 5): each
head's checkpoints in heads/HEAD/, TensorBoard scalars in logs/HEAD/, and at the end the chosen
model.keras, config.json (the settings, what was fitted on train, each head's val outcome, a
summary, the run id), its history.csv and the task's fitted files (Task.save). models/TASK/ gets
the same files (the current run), the previous run's metrics and plots removed, and manifest.json
last. A task with several heads (geoloc --head auto) trains each and keeps the better on its
monitored val value. A killed run resumes in its own folder from its last finished epoch
(loop.py); a run made with other settings or inputs, or with --force, is a new run.
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
from newsdl.tasks import layout
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
        return {**saved.get("summary", {}), "skipped": True, "stop": "up to date", "chief": cluster.chief}

    started, t0 = workspace.now(), time.monotonic()
    identity = {"config": config, "inputs": [i["sha256"] for i in inputs_meta]}
    run = None
    if cluster.chief:
        reset_for_training(folder)
        run = None if force else layout.unfinished_run(folder, identity)
        if run is None:
            run = layout.new_run(folder, identity)
            log.info("%s: run %s in %s", t.name, run, layout.run_folder(folder, run))
        else:
            log.info("%s: resuming run %s in %s", t.name, run, layout.run_folder(folder, run))
    run = decode_run(cluster.broadcast(encode_run(run)))  # the workers learn the chief's run folder
    run_dir = layout.run_folder(folder, run)
    data = t.load(ws, s)
    log.info("%s: %d train, %d val %s%s", t.name, len(data.rows["train"]), len(data.rows["val"]), t.unit,
             f"; {cluster.name}, global batch {s['batch_size']}" if cluster.name else "")
    runs = {head: _run(t, data, s, head, run_dir, identity, cluster) for head in t.heads(s)}
    if not cluster.chief:
        cluster.barrier()  # the chief's writes: a worker exits when the job's outcome is known
        return {"task": t.name, "chief": False, "workers": cluster.workers}

    best = min(runs, key=lambda h: runs[h]["score"])
    if len(runs) > 1:
        log.info("%s: heads %s -> %s", t.name, ", ".join(f"{h} {r['monitor']} {r['val_best']:.4g}"
                                                         for h, r in runs.items()), best)
    head_dir = layout.head_folder(run_dir, best)
    for name, src in ((MODEL, head_dir / "best.keras"), (HISTORY, head_dir / "history.csv")):
        with workspace.atomic_path(folder / name) as tmp:
            shutil.copyfile(src, tmp)
    calibration = t.calibrate(data, t.load_model(head_dir / "best.keras"), s)
    if calibration:
        data.record["calibration"] = calibration
        log.info("%s: fitted on val after training: %s", t.name, calibration_text(calibration))
    written = t.save(folder, data) or []
    summary = {"task": t.name, "folder": str(folder), "run": run, "head": best, **data.summary,
               "n_train": int(len(data.rows["train"])), "n_val": int(len(data.rows["val"])),
               **{k: runs[best][k] for k in ("monitor", "val_best", "best_epoch", "epochs_run")},
               "stop": runs[best].get("stop", ""),
               "seconds": round(time.monotonic() - t0, 1), "workers": cluster.workers}
    workspace.write_json(folder / CONFIG, {**config, "run": run, "head": best, "distributed": mode,
                                           "fitted": data.record, "heads": runs, "summary": summary})
    layout.archive(folder, [MODEL, CONFIG, HISTORY, *written], run_dir)
    workspace.write_manifest(folder, TRAIN_STAGE, inputs=inputs_meta, config=config,
                             counts={"train": summary["n_train"], "val": summary["n_val"]},
                             outputs=[MODEL, CONFIG, HISTORY, *written], started=started,
                             extra={"task": t.name, "run": run, "head": best, "workers": cluster.workers})
    layout.finish_run(folder, run, summary)
    cluster.barrier()
    return {**summary, "chief": True}


def _run(t, data, s: dict, head: str, run_dir: Path, identity: dict, cluster) -> dict | None:
    """Train one head to completion, or resume it; its outcome (on the chief)."""
    from newsdl.tasks import loop

    head_dir = layout.head_folder(run_dir, head)
    head_id = {**identity, "head": head}
    if cluster.chief:
        if workspace.read_json(head_dir / "run.json") != head_id:
            shutil.rmtree(head_dir, ignore_errors=True)  # another config's run: nothing to resume
        head_dir.mkdir(parents=True, exist_ok=True)
        workspace.clean_temporaries(head_dir)
        workspace.write_json(head_dir / "run.json", head_id)
    if cluster.broadcast([float((head_dir / "done.json").is_file())])[0]:
        log.info("%s/%s: already trained in %s", t.name, head, head_dir)
        done = workspace.read_json(head_dir / "done.json") if cluster.chief else None
        return {**done, "stop": f"resumed run already finished ({done.get('stop') or 'trained'})"} if done else None
    stop = loop.fit(t, data, s, head, head_dir, layout.log_folder(run_dir, head), cluster)
    if not cluster.chief:
        return None
    done = {"head": head, **loop.outcome(t, head_dir), "stop": stop}
    workspace.write_json(head_dir / "done.json", done)
    return done


def encode_run(run: str | None) -> list[float]:
    """A run id as floats, for Cluster.broadcast (date, time, suffix: exact in float64)."""
    m = layout.RUN_ID.match(run or "")
    return [float(m.group(1)), float(m.group(2)), float(m.group(3) or 1)] if m else [0.0, 0.0, 0.0]


def decode_run(values) -> str:
    date, clock, n = (int(v) for v in values)
    return f"{date:08d}-{clock:06d}" + (f"-{n}" if n > 1 else "")


def calibration_text(calibration: dict) -> str:
    """One short line: scalars with their value, a list by its length (source's linear_bias has
    one value per class), a mapping by its keys."""
    parts = []
    for k, v in calibration.items():
        if isinstance(v, bool) or v is None or isinstance(v, str):
            parts.append(f"{k} {v}")
        elif isinstance(v, (int, float)):
            parts.append(f"{k} {v:.4g}")
        elif isinstance(v, (list, tuple)):
            parts.append(f"{k} ({len(v)} values)")
        elif isinstance(v, dict):
            parts.append(f"{k} ({len(v)} entries)")
        else:
            parts.append(f"{k} ({type(v).__name__})")
    return ", ".join(parts)
