"""The one training loop of every task, in one process or on the workers of a multi-worker job.

A `tf.function` step runs under the active `tf.distribute` strategy: the default strategy in one
process, MultiWorkerMirroredStrategy with `--distributed` (cluster.py). Keras 3's `fit` fails
under the latter (keras-team/keras#20585), so one hand-written loop serves both, and a run on N
workers is the one-process run with its global batch cut in N:
- every worker draws the same per-epoch permutation of (seed, epoch) and keeps a contiguous slice
  of each global batch of ``--batch-size`` examples (sharding by example);
- each example's loss terms come from the task (Task.losses), and a replica's loss is its sum over
  its examples divided by the global batch's size, plus the regularisation divided by the number
  of replicas: the summed gradient is the global batch's mean gradient. A loss over the whole
  batch (illustrate's contrastive loss) gathers the other replicas' embeddings (Batch.gather,
  whose gradient is summed back to their owners);
- dropout masks are drawn for the global batch, each replica applying its rows (GlobalBatchDropout),
  from generators reseeded per epoch; BatchNormalization takes global-batch statistics;
- the val pass runs whole on every worker (val is small; identical weights give identical numbers),
  so every worker takes the same early-stopping decision.
tests/test_distributed.py holds two workers to the one-process run within defaults.DIST_VAL_LOSS_RTOL.

What the loop owns, once for every task:
- the untrained model is a candidate (a closed-form linear model or the gazetteer's look-up for the
  article tasks): a trained epoch replaces it only when better on val by the task's min_delta;
- early stopping on the task's monitored value (min or max), the best epoch's model kept in
  runs/RUN/heads/HEAD/best.keras (written, then renamed);
- resume: a tf.train.CheckpointManager in runs/RUN/heads/HEAD/backup/ saves the model, the optimizer (whose
  step count drives the learning rate) and the loop's state (EPOCH...BEST_EPOCH) after each epoch,
  so a killed run ends with the weights of an uninterrupted one. Only the chief writes (the others
  save to a temporary folder they delete: saving is a collective step);
- history.csv, TensorBoard scalars in runs/RUN/logs/HEAD/ (one folder per run: TensorBoard shows
  runs side by side, never one run's curve appended to another's), a log line per epoch (a bar within it on a tty);
- SIGUSR1/SIGTERM on any worker (SLURM's warning before a time limit or a preemption, which the
  job scripts forward): all leave at the same step by raising Preempted, exit 75 (checkpointed,
  requeue me). The cut epoch writes no history row and no checkpoint, so the requeued run resumes
  after the last finished epoch: the running epoch is lost, never a finished one.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from newsdl import defaults as td  # noqa: E402
from newsdl import workspace  # noqa: E402
from newsdl.tasks.task import Batch  # noqa: E402

log = logging.getLogger("newsdl.tasks")
# The loop's state in the checkpoint: the next epoch, early stopping's best (sign x value: lower is
# better) and count, the best checkpoint's value (sign x value) and epoch (0: the untrained model).
EPOCH, BEST, WAIT, SAVED, BEST_EPOCH = range(5)


# ------------------------------------------------------------------ stop signals

SIGNALS = ("SIGUSR1", "SIGTERM")
_stop = {"signal": None, "installed": False}


class Preempted(SystemExit):
    """Training stopped on a signal after its last checkpoint; the process exits with its code."""

    def __init__(self, signame: str):
        super().__init__(td.PREEMPTED_EXIT)
        self.signame = signame


def _on_signal(signum, frame) -> None:
    _stop["signal"] = signal.Signals(signum).name


def install() -> bool:
    """Catch SIGUSR1 and SIGTERM from now on (main thread only); True if installed."""
    if _stop["installed"]:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    for name in SIGNALS:
        signal.signal(getattr(signal, name), _on_signal)
    _stop["installed"] = True
    return True


def requested() -> str | None:
    """The signal that asked training to stop, if one came."""
    return _stop["signal"]


class Cluster:
    """This process's place among the workers, and the collectives they agree through; with no
    strategy given, one process alone (TensorFlow's default strategy)."""

    def __init__(self, strategy=None):
        import tensorflow as tf

        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = int(self.strategy.num_replicas_in_sync)  # workers x devices per worker
        self.chief = bool(self.strategy.extended.should_checkpoint)
        r = getattr(self.strategy, "cluster_resolver", None)
        spec = r.cluster_spec().as_dict() if r is not None else {}
        self.workers = len(spec.get("chief", [])) + len(spec.get("worker", [])) or 1
        self.name = f"{r.task_type} {r.task_id} of {self.workers}" if r is not None else ""
        self._sum = None
        if self.workers > 1:
            local = max(self.replicas // self.workers, 1)
            strategy = self.strategy

            def first_local_replica(v):
                # A worker with several devices has several replicas: only its first one counts.
                rid = tf.distribute.get_replica_context().replica_id_in_sync_group
                return v * tf.cast(tf.equal(tf.math.floormod(rid, local), 0), v.dtype)

            @tf.function(autograph=False)
            def total(v):
                return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(first_local_replica, args=(v,)),
                                       axis=None)

            self._sum = total

    def total(self, values) -> np.ndarray:
        """The sum of every worker's ``values`` (a float vector), on every worker; also a barrier."""
        import tensorflow as tf

        values = np.asarray(values, np.float64)
        return values if self._sum is None else self._sum(tf.constant(values)).numpy()

    def broadcast(self, values) -> np.ndarray:
        """The chief's ``values`` (a float vector), on every worker; also a barrier."""
        return self.total(values if self.chief else np.zeros(len(values)))

    def barrier(self) -> None:
        self.broadcast([0.0])


def set_determinism(seed: int) -> None:
    """Same seed, same CPU, same results: every RNG seeded and TF's ops made deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit(task, data, s: dict, head: str, run_dir: Path, log_dir: Path, cluster: Cluster) -> str:
    """Train ``task``'s model on ``data`` (or resume it) until early stopping or the epoch cap;
    the best val epoch's model ends in run_dir/best.keras (on the chief). Why training stopped,
    in words, for train's summary."""
    import keras
    import tensorflow as tf

    from newsdl.tasks.data import dataset

    name = task.name if head == "default" else f"{task.name}/{head}"
    who = f" ({cluster.name})" if cluster.name else ""
    strategy = cluster.strategy
    install()
    set_determinism(s["seed"])
    rows = data.rows
    n_train, n_val, batch = len(rows["train"]), len(rows["val"]), s["batch_size"]
    steps = math.ceil(n_train / batch)
    sign = 1.0 if task.mode == "min" else -1.0
    with strategy.scope():
        model = task.build(data, s, head)
        lr = s["lr"] if task.lr_half_life is None else keras.optimizers.schedules.ExponentialDecay(
            s["lr"], decay_steps=steps * task.lr_half_life, decay_rate=0.5)
        optimizer = keras.optimizers.Adam(lr, clipnorm=task.clipnorm)
        optimizer.build(model.trainable_variables)
    if cluster.replicas > 1:
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True  # statistics over the global batch, as one worker has them
    state = tf.Variable(np.zeros(5), dtype=tf.float64, trainable=False, name="loop_state")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, state=state)

    backup = run_dir / "backup"
    latest = tf.train.latest_checkpoint(str(backup)) if cluster.chief else None
    start = int(cluster.broadcast([float(latest.rsplit("-", 1)[1]) if latest else -1.0])[0])
    if start >= 0:
        path = backup / f"ckpt-{start}"
        if not Path(str(path) + ".index").is_file():
            from newsdl.errors import UserError

            raise UserError(f"{path}: the chief's checkpoint is not visible to{who or ' this worker'}; the "
                            f"workspace must be on a file system shared by every worker")
        checkpoint.restore(str(path)).assert_existing_objects_matched()
    start = max(start, 0)
    history_path = run_dir / "history.csv"
    if cluster.chief:
        read_history(history_path, start)  # drops the rows of epochs after the checkpoint
    st = state.numpy().copy()
    if start:
        log.info("%s: resuming after epoch %d (best %s %.4g)%s", name, start, task.monitor, sign * st[BEST], who)
        if st[WAIT] >= s["patience"] or start >= s["epochs"]:
            why = "early stopping" if st[WAIT] >= s["patience"] else f"the epoch cap ({s['epochs']})"
            log.info("%s: %s had already ended this run", name, why)
            return f"resumed run already finished ({why} after epoch {start})"

    weighted = data.weight is not None
    train_ds = shard_batches(strategy, data.x, data.y, rows["train"], batch, data.weight, seed=s["seed"],
                             epochs=(start, s["epochs"]))
    # Val counts every labelled example once (a weight 0 in training: a label the model cannot have).
    val_weight = (data.weight > 0) if weighted else np.ones(len(next(iter(data.x.values()))), bool)
    val_ds = dataset(data.x, data.y, rows["val"], batch, sample_weight=val_weight.astype(np.float32))
    train_step, val_step, regularization = _steps(task, strategy, model, optimizer, cluster.replicas, weighted)
    write_dir = str(backup) if cluster.chief else tempfile.mkdtemp(prefix=f"newsdl-{task.name}-worker-")
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=2)
    best_path, tmp_best = run_dir / "best.keras", run_dir / (workspace.TMP_PREFIX + "best.keras")

    def validate() -> dict:
        sums, outputs = {}, {k: [] for k in task.val_outputs}
        for bx, by, bw in val_ds:
            terms, outs = val_step(bx, by, bw)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.numpy())
            for k, v in outs.items():
                outputs[k].append(v.numpy())
        logs = {_column(k, "val_"): v / max(n_val, 1) for k, v in sums.items()}
        logs["val_loss"] += float(regularization().numpy())
        logs.update(task.validate(data, {k: np.concatenate(v) for k, v in outputs.items()}))
        return logs

    def save_best():
        if cluster.chief:
            model.save(tmp_best)
            os.replace(tmp_best, best_path)

    if start == 0:
        initial = validate()[task.monitor]
        st[:] = [0, sign * initial, 0, sign * initial - task.min_delta, 0]
        save_best()
        log.info("%s: untrained (initial) model: %s %.4g", name, task.monitor, initial)

    writer = tf.summary.create_file_writer(str(log_dir)) if cluster.chief else None
    iterator = iter(train_ds)
    columns = None
    stop = f"the epoch cap ({s['epochs']} epochs)"
    try:
        for epoch in range(start, s["epochs"]):
            t = time.monotonic()
            reseed(model, s["seed"], epoch)
            sums = {}
            with _bar(f"{name} epoch {epoch + 1}/{s['epochs']}", steps) as bar:
                for _ in range(steps):
                    out = train_step(iterator, tf.constant(1.0 if requested() else 0.0))
                    if out.pop("stop") > 0:
                        _preempted(name, who, f"during epoch {epoch + 1}")
                    n = out.pop("n")
                    for k, v in out.items():
                        sums[k] = sums.get(k, 0.0) + v * n
                    bar.update(1)
            logs = {_column(k): v / n_train for k, v in sums.items()}
            logs.update(validate())
            dt = max(time.monotonic() - t, 1e-9)  # training and validation, as Keras's fit times an epoch
            value = sign * logs[task.monitor]
            if value < st[SAVED]:  # the best checkpoint's rule (see above)
                st[SAVED], st[BEST_EPOCH] = value, epoch + 1
                save_best()
            # Early stopping's rule: an improvement by more than min_delta resets the count.
            st[BEST], st[WAIT] = (value, 0) if value < st[BEST] - task.min_delta else (st[BEST], st[WAIT] + 1)
            st[EPOCH] = epoch + 1
            if cluster.chief:
                columns = columns or ["epoch", *sorted(logs)]
                _append_history(history_path, columns, {"epoch": epoch, **logs})
                with writer.as_default(step=epoch + 1):
                    for k, v in logs.items():
                        tf.summary.scalar(k, v)
                writer.flush()
            state.assign(st)
            # Last, so that a saved epoch has its history row and best model already written.
            manager.save(checkpoint_number=epoch + 1)
            if not cluster.chief:
                shutil.rmtree(write_dir, ignore_errors=True)
            log.info("%s epoch %d/%d%s: loss %.4g, %s %.4g (%.1f s, %.0f %s/s)", name, epoch + 1, s["epochs"], who,
                     logs["loss"], task.monitor, logs[task.monitor], dt, n_train / dt, task.unit)
            if cluster.total([1.0 if requested() else 0.0])[0] > 0:
                _preempted(name, who, f"after epoch {epoch + 1}")
            if st[WAIT] >= s["patience"]:
                log.info("%s: early stopping after epoch %d: best %s %.4g at epoch %d", name, epoch + 1,
                         task.monitor, sign * _saved_value(task, st), int(st[BEST_EPOCH]))
                stop = f"early stopping after {int(st[WAIT])} epochs without improvement (epoch {epoch + 1})"
                break
        else:
            if st[BEST_EPOCH] == s["epochs"]:
                log.warning("%s: stopped at the epoch cap (%d) while still improving on val; more epochs "
                            "(--epochs) may help", name, s["epochs"])
                stop += ", still improving: more --epochs may help"
    finally:
        if not cluster.chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    return stop


def outcome(task, run_dir: Path) -> dict:
    """A finished run's best val value and epoch (from its last checkpoint and history.csv)."""
    import tensorflow as tf

    state = tf.Variable(np.zeros(5), dtype=tf.float64, trainable=False, name="loop_state")
    tf.train.Checkpoint(state=state).restore(tf.train.latest_checkpoint(str(run_dir / "backup"))).expect_partial()
    st = state.numpy()
    sign = 1.0 if task.mode == "min" else -1.0
    saved = _saved_value(task, st)
    return {"val_best": round(float(sign * saved), 6), "monitor": task.monitor, "best_epoch": int(st[BEST_EPOCH]),
            "epochs_run": len(read_history(run_dir / "history.csv", None)), "score": float(saved)}


def _saved_value(task, st) -> float:
    """The best checkpoint's value (sign x value): SAVED less min_delta while the untrained model
    holds it, so the untrained model's own value adds it back."""
    return float(st[SAVED] + (task.min_delta if st[BEST_EPOCH] == 0 else 0.0))


def _column(key: str, prefix: str = "") -> str:
    """history.csv's name of a loss term: loss, or OUTPUT_loss (Keras's names)."""
    return prefix + (key if key == "loss" else f"{key}_loss")


def _bar(desc: str, steps: int):
    """A bar within each epoch on a terminal; in batch logs the epoch's own line is enough."""
    import contextlib
    import types

    from newsdl.progress import Progress, interactive

    silent = types.SimpleNamespace(update=lambda n: None)
    return Progress(desc, total=steps, unit="steps") if interactive() else contextlib.nullcontext(silent)


def _preempted(name: str, who: str, when: str):
    """Leave training on every worker at once (a worker alone would hang its peers' collectives),
    keeping the last finished epoch's checkpoint: the exit status asks for a requeue."""
    signame = requested() or "another worker's stop signal"
    log.warning("%s%s: %s received %s: leaving training; exit %d (a requeued job resumes after the last "
                "finished epoch)", name, who, signame, when, td.PREEMPTED_EXIT)
    raise Preempted(signame)


def reseed(model, seed: int, epoch: int) -> None:
    """Set every random layer's generator (dropout) from (seed, epoch, layer): a resumed run draws
    the masks an uninterrupted one draws, without saving the generators' states."""
    k = 0
    for layer in model._flatten_layers(include_self=False):
        for gen in getattr(layer, "_seed_generators", []):
            k += 1
            gen.state.assign(np.array([(seed * 1_000_003 + epoch * 1009 + k) % 2**31, 0], dtype=gen.state.dtype))


def shard_batches(strategy, x: dict, y: dict, rows, batch: int, weight, *, seed: int, epochs: tuple[int, int]):
    """The training batches of epochs [first, last), cut per replica: every worker draws the same
    global batches (one permutation per (seed, epoch)) and keeps its contiguous slice of each, so
    the global batch is --batch-size whatever the number of workers."""
    import tensorflow as tf

    rows = np.asarray(rows, np.int64)
    n = len(rows)

    def make(ctx):
        # Replica k of R takes rows [size*k//R, size*(k+1)//R) of each global batch; a worker with
        # several replicas (GPUs) yields its replicas' slices in turn, as the strategy reads them.
        replicas = ctx.num_replicas_in_sync
        local = replicas // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local
        xs = {k: tf.constant(v[rows]) for k, v in x.items()}
        ys = {k: tf.constant(v[rows]) for k, v in y.items()}
        w = tf.constant(weight[rows]) if weight is not None else None

        def cut(idx, k):
            size = tf.shape(idx, out_type=tf.int64)[0]
            idx = idx[size * k // replicas:size * (k + 1) // replicas]
            bx = {name: tf.gather(v, idx) for name, v in xs.items()}
            by = {name: tf.gather(v, idx) for name, v in ys.items()}
            return (bx, by, tf.gather(w, idx)) if w is not None else (bx, by)

        def one_epoch(epoch):
            return tf.data.Dataset.range(n).shuffle(n, seed=seed * 100_003 + epoch,
                                                    reshuffle_each_iteration=False).batch(batch)

        ds = tf.data.Dataset.range(*epochs).flat_map(one_epoch)
        if local == 1:
            ds = ds.map(lambda idx: cut(idx, first))
        else:
            ds = ds.flat_map(lambda idx: tf.data.Dataset.range(first, first + local).map(lambda k: cut(idx, k)))
        options = tf.data.Options()
        options.deterministic = True
        # Sharded here, by example: tf.data must not shard it again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(make)


class GlobalBatchDropout:
    """Dropout masks of the global batch, not of each replica's slice.

    A Dropout layer draws its mask from its seed generator and the shape of its input, so replicas
    that each hold a slice of the batch would draw other masks than one worker holding all of it,
    and the run would drift away from a single worker's by the dropout noise. Patched onto the
    model's Dropout layers (SpatialDropout included), each replica draws the layer's mask for the
    whole global batch, exactly as a single worker does (same generator, same shape, same call),
    and applies its own rows of it: one uniform draw per element of the global batch."""

    def __init__(self, model):
        import keras

        self.offset = self.size = None
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.Dropout):
                layer.call = self._wrap(layer.call)

    def _wrap(self, original):
        import tensorflow as tf

        def call(inputs, training=False):
            if not training or self.size is None:
                return original(inputs, training=training)
            shape = tf.concat([[self.size], tf.shape(inputs)[1:]], 0)
            mask = original(tf.ones(shape, inputs.dtype), training=True)  # 0 or 1 / (1 - rate)
            return inputs * mask[self.offset:self.offset + tf.shape(inputs)[0]]

        return call


def _steps(task, strategy, model, optimizer, replicas: int, weighted: bool):
    """The training step (one global batch, sums over the workers) and the val step (one batch,
    on this worker)."""
    import tensorflow as tf

    total = tf.distribute.ReduceOp.SUM

    def regularization():
        return tf.add_n([tf.cast(v, tf.float32) for v in model.losses]) if model.losses else tf.constant(0.0)

    dropout = GlobalBatchDropout(model) if replicas > 1 else None
    parts = []

    def replica_train(batch, stop):
        bx, by, bw = batch if weighted else (*batch, None)
        ctx = tf.distribute.get_replica_context()
        n_local = tf.cast(tf.shape(tf.nest.flatten(bx)[0])[0], tf.float32)
        n_global = ctx.all_reduce(total, n_local) if replicas > 1 else n_local
        size = tf.cast(n_global, tf.int32)
        offset = size * ctx.replica_id_in_sync_group // ctx.num_replicas_in_sync
        if dropout is not None:
            dropout.size, dropout.offset = size, offset
        gather = (lambda t: ctx.all_gather(t, axis=0)) if replicas > 1 else (lambda t: t)
        with tf.GradientTape() as tape:
            pred = model(bx, training=True)
            terms = task.losses(by, pred, Batch(offset, gather))
            w = 1.0 if bw is None else tf.cast(bw, tf.float32)
            sums = {k: tf.reduce_sum(tf.cast(v, tf.float32) * w) for k, v in terms.items()}
            # Summed over the replicas: the global batch's mean loss, plus the regularisation once.
            loss = sums["loss"] / n_global + regularization() / replicas
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)  # all-reduces (sums) the gradients first
        # [loss, stop (a stop signal's flag, summed: every worker learns of any), the global batch
        # size, each loss part (named in ``parts``, filled in while tracing)]
        parts[:] = sorted(k for k in sums if k != "loss")
        return tf.stack([loss, stop, n_local, *(sums[k] / n_global for k in parts)])

    # No AutoGraph: the steps have no tensor-dependent Python control flow, and AutoGraph would
    # convert the code they call too (newsdl.ops' loader, whose `global` assignments it breaks;
    # Keras's own steps opt out the same way).
    @tf.function(autograph=False)
    def train_step_vector(iterator, stop):
        return strategy.reduce(total, strategy.run(replica_train, args=(next(iterator), stop)), axis=None)

    def train_step(iterator, stop) -> dict:
        out = train_step_vector(iterator, stop).numpy().astype(float)
        return {"loss": out[0], "stop": out[1], "n": out[2], **dict(zip(parts, out[3:]))}

    @tf.function(autograph=False, reduce_retracing=True)
    def val_step(bx, by, bw):
        pred = model(bx, training=False)
        terms = task.losses(by, pred, Batch())
        return ({k: tf.reduce_sum(tf.cast(v, tf.float32) * bw) for k, v in terms.items()},
                {k: pred[k] for k in task.val_outputs})

    return train_step, val_step, regularization


def read_history(path: Path, keep_before: int | None) -> list[dict]:
    """history.csv rows as floats; with ``keep_before``, rows of later epochs (written before a
    kill, but not checkpointed) are dropped from the file too."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]
    if keep_before is not None:
        kept = [r for r in rows if r.get("epoch", 0) < keep_before]
        if len(kept) != len(rows) or keep_before == 0:
            if kept:
                with workspace.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
                    writer = csv.DictWriter(fh, list(kept[0]))
                    writer.writeheader()
                    writer.writerows({k: (int(v) if k == "epoch" else v) for k, v in r.items()} for r in kept)
            else:
                path.unlink()
        rows = kept
    return rows


def _append_history(path: Path, columns: list[str], row: dict) -> None:
    """One epoch's row of history.csv (epoch, then the logs), flushed to disk before the checkpoint."""
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: (int(v) if k == "epoch" else repr(float(v))) for k, v in row.items()})
        fh.flush()
        os.fsync(fh.fileno())
