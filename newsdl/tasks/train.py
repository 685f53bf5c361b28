"""`newsdl train TASK`: fit a head on the workspace's features, resumably and deterministically.

Layout of DIR/models/TASK/:
  model.keras      the chosen model (Keras format, loaded in safe mode)
  config.json      everything needed to rebuild its inputs: features, fitted labels/cells/target
                   statistics, settings, the hash of the word vectors, val scores of each head
  bow.json         the TF-IDF vocabulary and idf (when the bag of words is used)
  history.csv      the chosen run's per-epoch losses
  logs/HEAD/       TensorBoard logs
  runs/HEAD/       one training run: run.json (its identity), best.keras (ModelCheckpoint),
                   history.csv, backup/ (BackupAndRestore, while it runs), done.json
  manifest.json    written last

Training: Adam with the step halving every LR_HALF_LIFE epochs, early stopping on the val metric
(mean km for geoloc, the loss otherwise), the best val epoch kept by ModelCheckpoint. The untrained
model is a candidate too: source and popularity start from a linear model fitted in closed form
(models.head_output), geoloc from the gazetteer's choice (models.build_geoloc), and training has
to beat that starting point on val to replace it.

A killed run resumes from its last finished epoch: BackupAndRestore restores the weights and the
optimizer (with its step count, hence the learning rate), the epoch's shuffling and dropout masks
are functions of (seed, epoch), and early stopping and the checkpoint's best value are restored
from history.csv, so the resumed run ends with the very weights of an uninterrupted one.
Determinism: keras.utils.set_random_seed and TF op determinism; same seed, same CPU, same model.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  (this module is imported only by commands that train)
import numpy as np  # noqa: E402

from newsdl import defaults, workspace  # noqa: E402
from newsdl.errors import UserError  # noqa: E402
from newsdl import defaults as td  # noqa: E402
from newsdl.tasks.data import dataset, load_corpus, upstream  # noqa: E402
from newsdl.tasks.layout import CONFIG, HISTORY, MODEL, TRAIN_STAGE, reset_for_training  # noqa: E402
from newsdl.tasks.preempt import StopOnSignal  # noqa: E402
from newsdl.tasks.prepare import (fit_inputs, model_inputs, resolve_features, save_fitted, split_rows,  # noqa: E402
                                  task_module)

log = logging.getLogger("newsdl.tasks")


def settings(task: str, *, head: str | None = None, epochs: int | None = None, batch_size: int | None = None,
             lr: float | None = None, seed: int | None = None, patience: int | None = None) -> dict:
    """The training settings, defaults filled in and checked (UserError names the option)."""
    if head is not None and task != "geoloc":
        raise UserError(f"--head {head}: only geoloc has heads to choose from")
    s = {"head": head or ("auto" if task == "geoloc" else "default"),
         "epochs": td.EPOCHS if epochs is None else int(epochs),
         "batch_size": td.BATCH_SIZE if batch_size is None else int(batch_size),
         "lr": td.LEARNING_RATE if lr is None else float(lr),
         "seed": defaults.SEED if seed is None else int(seed),
         "patience": td.PATIENCE if patience is None else int(patience)}
    if task == "geoloc" and s["head"] not in td.HEADS:
        raise UserError(f"--head {s['head']}: choose one of {', '.join(td.HEADS)}")
    for name in ("epochs", "batch_size"):
        if s[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} {s[name]}: must be at least 1")
    if not 0 < s["lr"] < 10:
        raise UserError(f"--lr {s['lr']}: must be in (0, 10)")
    if s["patience"] < 1:
        raise UserError(f"--patience {s['patience']}: must be at least 1")
    return s


def set_determinism(seed: int) -> None:
    """Same seed, same CPU, same results: every RNG seeded and TF's ops made deterministic."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train_task(ws: Path, task: str, *, features=None, force: bool = False, **options) -> dict:
    """Train TASK's model in workspace ``ws`` in this process; return a summary (folder, head, val
    score, ...). (On the workers of a multi-worker job: newsdl.tasks.distributed.train_distributed.)

    ``features``: a comma list or list of families (None: all available). ``options``: head,
    epochs, batch_size, lr, seed, patience (None: the defaults). Up to date: returns at once.
    """
    with workspace.stage_lock(Path(ws) / "models" / task, f"train {task}"):
        return _train_task(Path(ws), task, features=features, force=force, **options)


def _train_task(ws: Path, task: str, *, features, force: bool, **options) -> dict:
    if task in td.MULTIMODAL_TASKS:  # caption, illustrate: per-image tasks with their own modules
        import importlib

        return importlib.import_module(f"newsdl.tasks.{task}").train(ws, features=features, force=force, **options)
    mod = task_module(task)
    s = settings(task, **options)
    corpus = load_corpus(ws)
    chosen = resolve_features(task, features, corpus.available, ws)
    folder = ws / "models" / task
    config = {"task": task, "features": chosen, **s}
    inputs_meta = upstream(ws)
    if not force and workspace.is_up_to_date(folder, inputs_meta, config):
        log.info("%s: model up to date in %s (use --force to retrain)", task, folder)
        summary = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        return {**summary.get("summary", {}), "skipped": True}

    started, t0 = workspace.now(), time.monotonic()
    reset_for_training(folder)
    if force:
        shutil.rmtree(folder / "runs", ignore_errors=True)

    rows, fitted, objects, record, fitted_all, x = prepare(ws, mod, corpus, chosen, s["seed"])
    log.info("%s: %d train, %d val articles; features %s", task, len(rows["train"]), len(rows["val"]),
             ",".join(chosen))

    heads = list(mod.HEADS) if s["head"] == "auto" else [s["head"]] if task == "geoloc" else ["default"]
    identity = {"config": config, "inputs": [i["sha256"] for i in inputs_meta]}
    runs = {}
    for head in heads:
        runs[head] = _run(folder, mod, head, corpus, x, rows, chosen, fitted_all, s, identity)
    best = min(runs, key=lambda h: runs[h]["val_score"])
    if len(runs) > 1:
        log.info("%s: --head auto: %s", task, ", ".join(f"{h} val {r['val_score']:.1f}" for h, r in runs.items())
                 + f" -> {best}")

    publish_run(folder, folder / "runs" / best, objects)
    summary = {"task": task, "folder": str(folder), "head": best, "features": chosen,
               "n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])),
               "val_score": runs[best]["val_score"], "best_epoch": runs[best]["best_epoch"],
               "epochs_run": runs[best]["epochs_run"], "seconds": round(time.monotonic() - t0, 1)}
    saved_config = {**config, "head": best, "head_requested": s["head"],
                    "fitted": {**fitted, **record}, "heads": runs, "summary": summary}
    workspace.write_json(folder / CONFIG, saved_config)
    outputs = [MODEL, CONFIG, HISTORY] + (["bow.json"] if "bow" in objects else [])
    workspace.write_manifest(folder, TRAIN_STAGE, inputs=inputs_meta, config=config,
                             counts={"train": summary["n_train"], "val": summary["n_val"]},
                             outputs=outputs, started=started, extra={"task": task, "head": best})
    return summary


def publish_run(folder: Path, run_dir: Path, objects: dict) -> None:
    """Copy a finished run's best model and history to the task folder, with what was fitted."""
    with workspace.atomic_path(folder / MODEL) as tmp:
        shutil.copyfile(run_dir / "best.keras", tmp)
    with workspace.atomic_path(folder / HISTORY) as tmp:
        shutil.copyfile(run_dir / "history.csv", tmp)
    save_fitted(folder, objects)


def prepare(ws: Path, mod, corpus, features: list[str], seed: int):
    """Rows of each split, what is fitted on train, and the model's input arrays.
    Returns (rows, task-fitted, fitted objects, their JSON record, all fitted, inputs)."""
    rows = split_rows(corpus, mod.labelled(corpus), seed)
    fitted = mod.fit(corpus, rows["train"], seed)
    objects, record = fit_inputs(corpus, features, rows["train"], ws)
    fitted_all = {**fitted, **objects}
    x = model_inputs(corpus, features, fitted_all)
    init = mod.wide_init(corpus, x, features, rows, fitted_all)
    if init is not None:
        fitted_all["wide_init"] = init
        record["wide_init"] = _describe_init(init)
    return rows, fitted, objects, record, fitted_all, x


# ------------------------------------------------------------------ one training run

def _run(folder: Path, mod, head: str, corpus, x, rows, features, fitted, s: dict, identity: dict) -> dict:
    """Train one head to completion (or resume it); return its val score and epochs."""
    run_dir = folder / "runs" / head
    run_id = {**identity, "head": head}
    previous = {k: v for k, v in (workspace.read_json(run_dir / "run.json") or {}).items() if k not in ("monitor", "initial")}
    if previous != run_id:
        shutil.rmtree(run_dir, ignore_errors=True)  # another config's run: nothing to resume
    run_dir.mkdir(parents=True, exist_ok=True)
    workspace.clean_temporaries(run_dir)
    if previous != run_id:
        workspace.write_json(run_dir / "run.json", run_id)

    done = workspace.read_json(run_dir / "done.json")
    if done is None:
        _fit(run_dir, folder / "logs" / head, mod, head, corpus, x, rows, features, fitted, s)
        done = finish_run(run_dir, mod, head, corpus, x, rows, fitted, s)
    else:
        log.info("%s/%s: already trained in %s", mod.NAME, head, run_dir)
    return done


def _fit(run_dir, log_dir, mod, head, corpus, x, rows, features, fitted, s) -> None:
    set_determinism(s["seed"])
    y = mod.targets(corpus, fitted, head, x)
    sw = mod.sample_weight(corpus, fitted, rows["train"])
    train_x = {k: v[rows["train"]] for k, v in x.items()}
    model = mod.build(features, train_x, fitted, head)
    steps = int(np.ceil(len(rows["train"]) / s["batch_size"]))
    # The step halves every LR_HALF_LIFE epochs: large steps while far from a good model, small
    # ones to settle. A function of the step count alone (saved with the optimizer), so a resumed
    # run continues the same schedule.
    lr = keras.optimizers.schedules.ExponentialDecay(s["lr"], decay_steps=steps * td.LR_HALF_LIFE, decay_rate=0.5)
    monitor = mod.compile_model(model, lr, fitted, head)
    workspace.write_json(run_dir / "run.json", {**workspace.read_json(run_dir / "run.json"), "monitor": monitor})

    history_path = run_dir / "history.csv"
    start = resume_epoch(run_dir / "backup")
    history = read_history(history_path, start)
    initial = (workspace.read_json(run_dir / "run.json") or {}).get("initial") if start else None
    best = min([r[monitor] for r in history if monitor in r] + ([initial] if initial is not None else []),
               default=None)
    if start:
        log.info("%s/%s: resuming after epoch %d (best %s %.4g)", mod.NAME, head, start, monitor,
                 best if best is not None else float("nan"))
    stopper = ResumableEarlyStopping(history, initial, monitor=monitor, patience=s["patience"],
                                         min_delta=td.MIN_DELTA[mod.NAME])
    if stopper.already_stopped(s["patience"]) or start >= s["epochs"]:
        log.info("%s/%s: early stopping had already ended this run", mod.NAME, head)
        return

    train_ds = dataset(x, y, rows["train"], s["batch_size"], seed=s["seed"], sample_weight=sw,
                       epochs=(start, s["epochs"]))
    val_ds = dataset(x, y, rows["val"], s["batch_size"],
                     sample_weight=None if sw is None else np.where(sw > 0, 1.0, 0.0).astype(np.float32))
    tmp_best = run_dir / (workspace.TMP_PREFIX + "best.keras")
    if start == 0:
        # The untrained model is a candidate too: it is the closed-form linear model (source,
        # popularity) or the gazetteer look-up (geoloc) it starts from, and training must beat it
        # on val to replace it.
        initial = float(model.evaluate(val_ds, return_dict=True, verbose=0)[monitor[len("val_"):]])
        model.save(tmp_best)
        os.replace(tmp_best, run_dir / "best.keras")
        workspace.write_json(run_dir / "run.json", {**workspace.read_json(run_dir / "run.json"), "initial": initial})
        best = initial
        stopper = ResumableEarlyStopping(history, initial, monitor=monitor, patience=s["patience"],
                                         min_delta=td.MIN_DELTA[mod.NAME])
        log.info("%s/%s: untrained (initial) model: %s %.4g", mod.NAME, head, monitor, initial)
    callbacks = [
        EpochSeeds(s["seed"]),
        EpochLog(f"{mod.NAME}/{head}", s["epochs"], len(rows["train"]), monitor),
        keras.callbacks.CSVLogger(str(history_path), append=True),
        # ModelCheckpoint writes a temporary file and Publish renames it: a kill mid-save never
        # leaves a broken best.keras.
        # The untrained model is a tuned closed-form model (or the gazetteer look-up): a trained
        # epoch replaces it only when it is better on val by MIN_DELTA, not by the noise of a few
        # hundred val articles.
        keras.callbacks.ModelCheckpoint(str(tmp_best), monitor=monitor, mode="min", save_best_only=True,
                                        initial_value_threshold=_threshold(best, initial, history, monitor,
                                                                           td.MIN_DELTA[mod.NAME])),
        Publish(tmp_best, run_dir / "best.keras"),
        stopper,
        *_tensorboard(log_dir),
        # Last, so that a backed-up epoch has its history row and checkpoint already written.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
        StopOnSignal(),  # after the backup: on SIGUSR1/SIGTERM, exit 75 so the job requeues and resumes
    ]
    model.fit(train_ds, validation_data=val_ds, epochs=s["epochs"], steps_per_epoch=steps,
              callbacks=callbacks, verbose=0, shuffle=False)


def _threshold(best, initial, history, monitor: str, min_delta: float):
    """What a checkpoint must beat: the best so far, less min_delta while the untrained model holds it."""
    if best is None:
        return None
    trained = [r[monitor] for r in history if monitor in r]
    held_by_initial = initial is not None and (not trained or initial <= min(trained))
    return best - min_delta if held_by_initial else best


def _describe_init(init: dict) -> dict:
    """The regularisation each wide path was fitted with (the weights live in the model)."""
    if "bias" in init:
        return {"C": init.get("C")}
    return {name: {"alpha": part.get("alpha")} for name, part in init.items()}


def _tensorboard(log_dir: Path) -> list:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return []
    return [keras.callbacks.TensorBoard(str(log_dir), write_graph=False, profile_batch=0)]


def finish_run(run_dir, mod, head, corpus, x, rows, fitted, s) -> dict:
    from newsdl.tasks.models import load

    if not (run_dir / "best.keras").is_file():
        raise RuntimeError(f"{run_dir}: training ended without a checkpoint (no finite val loss?)")
    model = load(run_dir / "best.keras")
    val = corpus.take(rows["val"])
    pred = mod.predict(model, dataset(x, {}, rows["val"], s["batch_size"]), fitted)
    history = read_history(run_dir / "history.csv", None)
    run = workspace.read_json(run_dir / "run.json")
    key = run.get("monitor", "val_loss")
    # Replayed as ModelCheckpoint decided: 0 when the untrained model was never beaten by MIN_DELTA.
    bar, best_epoch = run.get("initial", np.inf) - td.MIN_DELTA[mod.NAME], 0
    for r in history:
        if r.get(key, np.inf) < bar:
            bar, best_epoch = r[key], int(r["epoch"]) + 1
    done = {"head": head, "val_score": round(float(mod.val_score(val, pred, fitted)), 6),
            "best_epoch": best_epoch, "epochs_run": len(history)}
    workspace.write_json(run_dir / "done.json", done)
    return done


def resume_epoch(backup: Path) -> int:
    """The epoch BackupAndRestore will resume at (0: a fresh start)."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        meta = workspace.read_json(backup / name)
        if meta and (backup / "latest.weights.h5").is_file():
            return int(meta.get("epoch", 0))
    return 0


def read_history(path: Path, keep_before: int | None) -> list[dict]:
    """history.csv rows as floats; with ``keep_before``, rows of later epochs (written before a
    kill, but not backed up) are dropped from the file too."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]
    if keep_before is not None:
        kept = [r for r in rows if r.get("epoch", 0) < keep_before]
        if len(kept) != len(rows) or keep_before == 0:
            if kept:
                fields = list(kept[0])
                with workspace.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
                    writer = csv.DictWriter(fh, fields)
                    writer.writeheader()
                    for r in kept:
                        writer.writerow({k: (int(v) if k == "epoch" else v) for k, v in r.items()})
            else:
                path.unlink()
        rows = kept
    return rows


# ------------------------------------------------------------------ callbacks

class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that continues the count of a killed run from its history rows (``mode``: "min"
    for a loss, "max" for a score such as recall)."""

    def __init__(self, history: list[dict], initial: float | None = None, mode: str = "min", **kwargs):
        super().__init__(mode=mode, **kwargs)
        self._history = history
        self._initial = initial
        self._sign = 1.0 if mode == "min" else -1.0  # compare sign * value: lower is better

    def _replay(self):
        best = np.inf if self._initial is None else self._sign * self._initial
        wait, best_epoch = 0, -1
        for r in self._history:
            value = r.get(self.monitor)
            if value is None:
                continue
            if self._sign * value < best - abs(self.min_delta):
                best, wait, best_epoch = self._sign * value, 0, int(r["epoch"])
            else:
                wait += 1
        return self._sign * best, wait, best_epoch

    def already_stopped(self, patience: int) -> bool:
        return bool(self._history) and self._replay()[1] >= patience

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._history or self._initial is not None:
            self.best, self.wait, self.best_epoch = self._replay()


class EpochSeeds(keras.callbacks.Callback):
    """Set every random layer's generator (dropout) from (seed, epoch, layer) at each epoch start.

    BackupAndRestore does not save those generators' states; drawing them from the epoch makes
    a resumed run use the same dropout masks as an uninterrupted one."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        k = 0
        for layer in self.model._flatten_layers(include_self=False):
            for gen in getattr(layer, "_seed_generators", []):
                k += 1
                gen.state.assign(np.array([(self.seed * 1_000_003 + epoch * 1009 + k) % 2**31, 0],
                                          dtype=gen.state.dtype))


class Publish(keras.callbacks.Callback):
    """Rename the checkpoint's temporary file onto its final name once it is complete."""

    def __init__(self, tmp: Path, final: Path):
        super().__init__()
        self.tmp, self.final = Path(tmp), Path(final)

    def on_epoch_end(self, epoch, logs=None):
        if self.tmp.is_file():
            os.replace(self.tmp, self.final)


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch: losses, the monitored val value, time and throughput."""

    def __init__(self, name: str, epochs: int, n_train: int, monitor: str, unit: str = "articles"):
        super().__init__()
        self.name, self.epochs, self.n_train, self.monitor, self.unit = name, epochs, n_train, monitor, unit
        self._t = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        dt = max(time.monotonic() - self._t, 1e-9)
        log.info("%s epoch %d/%d: loss %.4g, %s %.4g (%.1f s, %.0f %s/s)", self.name, epoch + 1,
                 self.epochs, logs.get("loss", float("nan")), self.monitor,
                 logs.get(self.monitor, float("nan")), dt, self.n_train / dt, self.unit)
