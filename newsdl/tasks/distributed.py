"""`newsdl train TASK --distributed slurm|tf_config`: data-parallel training on several workers.

Each worker is one process (one SLURM task: one per node, or one per GPU), and all of them run
`tf.distribute.MultiWorkerMirroredStrategy`: every worker holds a copy of the weights, computes the
gradient of its share of each global batch, and the gradients are summed across workers before
each identical update. The cluster comes from `SlurmClusterResolver` (``slurm``: SLURM_PROCID,
SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE of the `srun` step) or from the TF_CONFIG variable
(``tf_config``: any other launcher, or processes started by hand).

Why a custom loop: Keras 3's `model.fit` fails under this strategy (keras-team/keras#20585), so
this module trains with a `tf.function` step around `strategy.run`, reusing what the single-worker
path uses: the task module's targets, model, losses and monitored value (`mod.compile_model`,
recorded rather than applied), `train.prepare` for the inputs, and the same folder layout, so
`newsdl evaluate` and `predict` read a distributed model exactly as a single-worker one.

The same global batch and seed give the single-process run's model (tests/test_distributed.py
holds them to defaults.DIST_VAL_LOSS_RTOL; they differ by float32 rounding, ~2e-7):
- every worker draws the same per-epoch permutation (seed, epoch) as data.dataset and keeps a
  contiguous slice of each global batch of ``--batch-size`` rows (sharding by example: the global
  batch is the same whatever the number of workers);
- each worker's loss is the sum of its examples' losses divided by the global batch's size, so
  the summed gradient is the global batch's mean gradient; the regularisation is divided by the
  number of workers; BatchNormalization takes its statistics over the global batch (synchronised);
- dropout masks are drawn for the global batch, each worker applying its rows (_GlobalBatchDropout),
  and the generators are reseeded per epoch as train.EpochSeeds does;
- the val pass (early stopping, best checkpoint) is sharded too, and its sums all-reduced, so every
  worker sees the same numbers and stops at the same epoch.
history.csv has the losses and the monitored value (not the compiled accuracy metrics); its
per-output train losses are means over examples, where Keras's fit averages its batches' means.

Fault tolerance: `keras.callbacks.BackupAndRestore` is a `fit` callback, so its equivalent here is a
`tf.train.CheckpointManager` over the model, the optimizer (its step count drives the learning
rate) and the epoch, saved after each epoch in runs/HEAD/backup/ by the chief (the other workers
save to a temporary folder that they delete, as TensorFlow's multi-worker guide recommends: saving
is a collective step). A restarted job (all of its workers: a worker that dies takes the others'
collectives down with it) restores the last epoch's checkpoint, drops later history rows, and
continues with the next epoch, with the early-stopping count replayed from history.csv. SIGUSR1 or
SIGTERM (preempt.py) on any worker makes all of them leave at the same step, exit 75 (requeue me).
Only the chief writes the model folder; the workspace must be on a file system every worker sees.

Heads: one per run. geoloc trains its regress head unless --head cells is given (--head auto is
two runs, single-worker only).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from newsdl import defaults, workspace  # noqa: E402
from newsdl.errors import UserError  # noqa: E402

log = logging.getLogger("newsdl.tasks")

MODES = ("none", "slurm", "tf_config")


def train_distributed(ws: Path, task: str, *, mode: str, features=None, force: bool = False,
                      **options) -> dict:
    """Train TASK's model in ``ws`` on the workers of a multi-worker job; on the chief, return the
    summary that `train.train_task` returns (others: the same with ``"chief": False``)."""
    from newsdl.tasks.prepare import task_module

    if mode not in MODES[1:]:
        raise UserError(f"--distributed {mode}: choose one of {', '.join(MODES[1:])}")
    if task in defaults.MULTIMODAL_TASKS:
        raise UserError(f"--distributed {mode}: {task} trains in one process only")
    ws = Path(ws)
    mod = task_module(task)
    if task == "geoloc" and options.get("head") in (None, "auto"):
        # --head auto trains both heads one after the other and keeps the better: on a cluster that
        # is two jobs' worth of time, so a distributed run trains one head, the paper's regression.
        log.info("geoloc --distributed: training the regress head (--head cells for the other; "
                 "--head auto is single-worker only)")
        options["head"] = "regress"
    # Check the usage and build the cluster before anything loads: a mistake exits 2 at once, and the
    # strategy must exist before TensorFlow's runtime starts (it configures the collectives).
    from newsdl.tasks.train import settings

    s = settings(task, **options)
    resolver = cluster_resolver(mode)
    strategy = _strategy(resolver)
    return _train(strategy, ws, task, mod, s, mode, features, force)


# ------------------------------------------------------------------ the cluster

def check_environment(mode: str) -> None:
    """UserError (exit 2) unless ``mode`` is known and the environment describes its cluster; cheap
    (no TensorFlow), so that the CLI answers a usage mistake at once."""
    if mode not in MODES:
        raise UserError(f"--distributed {mode}: choose one of {', '.join(MODES)}")
    if mode == "tf_config":
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            raise UserError("--distributed tf_config: the TF_CONFIG variable is not set; it must name the "
                            "cluster and this worker, e.g. {\"cluster\": {\"worker\": [\"host1:port\", "
                            "\"host2:port\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}")
        try:
            conf = json.loads(raw)
            workers = conf["cluster"]["worker"]
            index = int(conf["task"]["index"])
            assert conf["task"]["type"] in ("worker", "chief") and workers
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise UserError(f"--distributed tf_config: TF_CONFIG is not a cluster with workers and a task "
                            f"(type worker, index): {exc!r}") from None
        if not 0 <= index < len(workers) + len(conf["cluster"].get("chief", [])):
            raise UserError(f"--distributed tf_config: TF_CONFIG task index {index} is outside its cluster")
    if mode == "slurm":
        missing = [v for v in ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
                               "SLURM_STEP_TASKS_PER_NODE") if v not in os.environ]
        if missing:
            raise UserError(f"--distributed slurm: {missing[0]} is not set: run this as the tasks of a SLURM "
                            f"job step, e.g. `srun -n 2 newsdl train ... --distributed slurm` inside "
                            f"`sbatch --ntasks=2` (or use --distributed tf_config with TF_CONFIG)")


def cluster_resolver(mode: str):
    """The cluster of this job step; UserError (exit 2) when the environment does not describe one."""
    import tensorflow as tf

    check_environment(mode)
    if mode == "tf_config":
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return _slurm_resolver(tf)


def _slurm_port() -> int:
    """The first port of this job step's workers on each node: NEWSDL_DIST_PORT, else one derived from
    the job and step ids, so that two jobs sharing a node do not collide."""
    if os.environ.get("NEWSDL_DIST_PORT"):
        return int(os.environ["NEWSDL_DIST_PORT"])
    key = int(os.environ.get("SLURM_JOB_ID", "0") or 0) * 7 + int(os.environ.get("SLURM_STEP_ID", "0") or 0)
    return defaults.DIST_PORT_BASE + (key % defaults.DIST_PORT_SLOTS) * defaults.DIST_PORT_STRIDE


def _slurm_resolver(tf):
    base = tf.distribute.cluster_resolver.SlurmClusterResolver
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None and shutil.which("nvidia-smi"):
        # The node's GPUs are not shared out yet: the resolver gives each task on a node its own
        # (CUDA_VISIBLE_DEVICES), one task per GPU when there are as many tasks as GPUs.
        return base(port_base=_slurm_port())
    # Either the GPUs are already bound per task (`srun --gpus-per-task`, which sets this task's
    # CUDA_VISIBLE_DEVICES: kept as it is), or there is none. TF 2.21's resolver expresses neither:
    # it would renumber the devices from 0, and with no GPU it fails (nvidia-smi missing, or
    # gpus_per_task 0, which makes cluster_spec() call range(0, 0, 0)).
    gpus = len([d for d in (visible or "").split(",") if d.strip() not in ("", "-1")])

    class KeptDevicesResolver(base):
        """SlurmClusterResolver's cluster (hosts, ports, rank), with this task's devices as they are."""

        def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
            return {"GPU": gpus}

    # One placeholder "GPU" slot per task only lays the tasks out; nothing is assigned from it.
    tasks = int(os.environ["SLURM_STEP_NUM_TASKS"])
    return KeptDevicesResolver(port_base=_slurm_port(), gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)


def _strategy(resolver):
    import tensorflow as tf

    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except RuntimeError as exc:
        raise UserError(f"--distributed: cannot start the multi-worker strategy ({exc}); start it before "
                        f"anything else uses TensorFlow in this process") from None
    return strategy


class _Cluster:
    """This worker's place in the job, and the collectives the workers agree through."""

    def __init__(self, strategy):
        import tensorflow as tf

        self.strategy = strategy
        self.replicas = int(strategy.num_replicas_in_sync)  # workers x devices per worker
        self.chief = bool(strategy.extended.should_checkpoint)
        r = strategy.cluster_resolver
        spec = r.cluster_spec().as_dict() if r is not None else {}
        self.workers = len(spec.get("chief", [])) + len(spec.get("worker", [])) or 1
        self.name = f"{r.task_type} {r.task_id} of {self.workers}" if r is not None else "worker 0 of 1"

        local = max(self.replicas // self.workers, 1)

        def first_local_replica(v):
            # A worker with several devices has several replicas: only its first one counts.
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            return v * tf.cast(tf.equal(tf.math.floormod(rid, local), 0), v.dtype)

        @tf.function(autograph=False)
        def _sum(v):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(first_local_replica, args=(v,)),
                                   axis=None)

        self._sum = _sum

    def total(self, values) -> np.ndarray:
        """The sum of every worker's ``values`` (a float vector), on every worker; also a barrier."""
        import tensorflow as tf

        return self._sum(tf.constant(np.asarray(values, np.float64))).numpy()

    def broadcast(self, values) -> np.ndarray:
        """The chief's ``values`` (a float vector), on every worker; also a barrier."""
        return self.total(values if self.chief else np.zeros(len(values)))

    def barrier(self) -> None:
        self.broadcast([0.0])


# ------------------------------------------------------------------ the stage

def _train(strategy, ws: Path, task: str, mod, s: dict, mode: str, features, force: bool) -> dict:
    import contextlib

    cluster = _Cluster(strategy)
    with contextlib.ExitStack() as stack:
        if cluster.chief:  # the chief alone writes the model folder, so it alone holds its lock
            stack.enter_context(workspace.stage_lock(ws / "models" / task, f"train {task} --distributed {mode}"))
        return _train_as(cluster, ws, task, mod, s, mode, features, force)


def _train_as(cluster, ws: Path, task: str, mod, s: dict, mode: str, features, force: bool) -> dict:
    from newsdl.tasks.data import load_corpus, upstream
    from newsdl.tasks.layout import CONFIG, HISTORY, MODEL, TRAIN_STAGE, reset_for_training
    from newsdl.tasks.prepare import resolve_features
    from newsdl.tasks.train import prepare, publish_run

    corpus = load_corpus(ws)
    chosen = resolve_features(task, features, corpus.available, ws)
    folder = ws / "models" / task
    config = {"task": task, "features": chosen, **s, "distributed": mode}
    inputs_meta = upstream(ws)
    up_to_date = cluster.broadcast([float(not force and workspace.is_up_to_date(folder, inputs_meta, config))])
    if up_to_date[0]:
        log.info("%s: model up to date in %s (use --force to retrain)", task, folder)
        summary = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        return {**summary.get("summary", {}), "skipped": True, "chief": cluster.chief}

    started, t0 = workspace.now(), time.monotonic()
    if cluster.chief:
        reset_for_training(folder)
        if force:
            shutil.rmtree(folder / "runs", ignore_errors=True)
    rows, fitted, objects, record, fitted_all, x = prepare(ws, mod, corpus, chosen, s["seed"])
    log.info("%s: %s, %s: %d train, %d val articles; features %s; global batch %d", task, cluster.name, mode,
             len(rows["train"]), len(rows["val"]), ",".join(chosen), s["batch_size"])
    head = s["head"] if task == "geoloc" else "default"
    identity = {"config": config, "inputs": [i["sha256"] for i in inputs_meta]}
    run = _run(cluster, folder, mod, head, corpus, x, rows, chosen, fitted_all, s, identity)
    if not cluster.chief:
        cluster.barrier()  # the chief's writes: a worker exits when the job's outcome is known
        return {"task": task, "head": head, "chief": False, "workers": cluster.workers}

    publish_run(folder, folder / "runs" / head, objects)
    summary = {"task": task, "folder": str(folder), "head": head, "features": chosen,
               "n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])),
               "val_score": run["val_score"], "best_epoch": run["best_epoch"], "epochs_run": run["epochs_run"],
               "seconds": round(time.monotonic() - t0, 1), "distributed": mode, "workers": cluster.workers}
    saved_config = {**config, "head": head, "head_requested": s["head"], "fitted": {**fitted, **record},
                    "heads": {head: run}, "summary": summary}
    workspace.write_json(folder / CONFIG, saved_config)
    outputs = [MODEL, CONFIG, HISTORY] + (["bow.json"] if "bow" in objects else [])
    workspace.write_manifest(folder, TRAIN_STAGE, inputs=inputs_meta, config=config,
                             counts={"train": summary["n_train"], "val": summary["n_val"]},
                             outputs=outputs, started=started,
                             extra={"task": task, "head": head, "workers": cluster.workers})
    cluster.barrier()
    return {**summary, "chief": True}


def _run(cluster, folder: Path, mod, head: str, corpus, x, rows, features, fitted, s: dict, identity: dict):
    """Train one head to completion, or resume it (train._run's layout: runs/HEAD/)."""
    from newsdl.tasks.train import finish_run

    run_dir = folder / "runs" / head
    run_id = {**identity, "head": head}
    if cluster.chief:
        previous = {k: v for k, v in (workspace.read_json(run_dir / "run.json") or {}).items()
                    if k not in ("monitor", "initial")}
        if previous != run_id:
            shutil.rmtree(run_dir, ignore_errors=True)  # another config's run: nothing to resume
        run_dir.mkdir(parents=True, exist_ok=True)
        workspace.clean_temporaries(run_dir)
        if previous != run_id:
            workspace.write_json(run_dir / "run.json", run_id)
    done = cluster.broadcast([float((run_dir / "done.json").is_file())])[0]
    if done:
        log.info("%s/%s: already trained in %s", mod.NAME, head, run_dir)
        return workspace.read_json(run_dir / "done.json") if cluster.chief else None
    _fit(cluster, run_dir, mod, head, corpus, x, rows, features, fitted, s)
    if cluster.chief:
        return finish_run(run_dir, mod, head, corpus, x, rows, fitted, s)
    return None


# ------------------------------------------------------------------ losses

class _Recorder:
    """Stands in for the model in `mod.compile_model`: records what it would compile (optimizer,
    losses, their weights), reads every other attribute from the model."""

    def __init__(self, model):
        self._model = model
        self.compiled = {}

    def compile(self, *args, **kwargs):
        import inspect

        import keras

        bound = inspect.signature(keras.Model.compile).bind(self._model, *args, **kwargs)
        self.compiled = {k: v for k, v in bound.arguments.items() if k != "self"}

    def __getattr__(self, name):
        return getattr(self._model, name)


class _Losses:
    """The task's compiled losses, computed as sums over a worker's examples: the train loss divides
    them by the global batch's size, the val loss by the val split's."""

    def __init__(self, model, compiled: dict, task: str, head: str):
        import keras

        loss = compiled.get("loss")
        outputs = list(model.output_names)
        if not isinstance(loss, dict):
            if len(outputs) != 1 or loss is None:
                raise UserError(f"{task}/{head}: --distributed needs one loss per named output")
            loss = {outputs[0]: loss}
        weights = compiled.get("loss_weights") or {}
        self.names = [n for n in outputs if n in loss]
        self.losses = {n: keras.losses.get(loss[n]) for n in self.names}
        self.weights = {n: float(weights.get(n, 1.0)) for n in self.names}

    def sums(self, y, pred, sample_weight, n_local):
        """[weighted sum of every loss, each loss's sum]: each a sum over this worker's examples."""
        import keras
        import tensorflow as tf

        parts = []
        for name in self.names:
            fn = self.losses[name]
            y_true = tf.cast(y[name], tf.float32)
            y_pred = tf.cast(pred[name], tf.float32)
            if isinstance(fn, keras.losses.Loss):
                values, reduction = fn.call(y_true, y_pred), fn.reduction
            else:
                values, reduction = fn(y_true, y_pred), "sum_over_batch_size"
            values = tf.cast(values, tf.float32)
            if sample_weight is not None:
                w = tf.cast(sample_weight, tf.float32)
                w = tf.reshape(w, tf.concat([tf.shape(w), tf.ones([tf.rank(values) - 1], tf.int32)], 0))
                values = values * w
            total = tf.reduce_sum(values)
            if reduction == "sum":
                # The loss normalises itself by its batch (MaskedHuber: by the targets present), so
                # its sum is a mean over this worker's examples: weigh it by their number.
                total = total * n_local
            else:
                # Keras averages over every element: several per example (a [B, k] loss) count k times.
                total = total / tf.cast(tf.reduce_prod(tf.shape(values)[1:]), tf.float32)
            parts.append(total)
        weighted = tf.add_n([self.weights[n] * p for n, p in zip(self.names, parts)])
        return [weighted, *parts]

    def columns(self) -> list[str]:
        """The history columns of the loss parts, named as Keras names them."""
        return [f"{n}_loss" for n in self.names] if len(self.names) > 1 else []


# ------------------------------------------------------------------ the training loop

def _fit(cluster, run_dir: Path, mod, head, corpus, x, rows, features, fitted, s) -> None:
    import keras
    import tensorflow as tf

    from newsdl import defaults as td
    from newsdl.tasks.train import EpochSeeds, read_history, set_determinism

    from newsdl.tasks import preempt

    strategy = cluster.strategy
    preempt.install()  # SIGUSR1/SIGTERM: leave at the next step, on every worker (see _preempted)
    set_determinism(s["seed"])
    y = mod.targets(corpus, fitted, head, x)
    sw = mod.sample_weight(corpus, fitted, rows["train"])
    train_x = {k: v[rows["train"]] for k, v in x.items()}
    n_train, n_val, batch = len(rows["train"]), len(rows["val"]), s["batch_size"]
    if n_val == 0:
        raise UserError(f"{mod.NAME}: no labelled val article (field 'split'); --distributed needs val articles "
                        f"for early stopping")
    steps = int(np.ceil(n_train / batch))
    with strategy.scope():
        model = mod.build(features, train_x, fitted, head)
        lr = keras.optimizers.schedules.ExponentialDecay(s["lr"], decay_steps=steps * td.LR_HALF_LIFE,
                                                         decay_rate=0.5)
        recorder = _Recorder(model)
        monitor = mod.compile_model(recorder, lr, fitted, head)
        optimizer = keras.optimizers.get(recorder.compiled.get("optimizer", "rmsprop"))
        optimizer.build(model.trainable_variables)
    losses = _Losses(model, recorder.compiled, mod.NAME, head)
    km = _km_key(monitor, losses, model, mod.NAME, head)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            # Statistics over the global batch, as one worker computes them; read at call time.
            layer.synchronized = True
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
    if cluster.chief:
        workspace.write_json(run_dir / "run.json", {**workspace.read_json(run_dir / "run.json"), "monitor": monitor})

    # ---- resume: every worker restores the chief's last checkpoint
    backup = run_dir / "backup"
    latest = tf.train.latest_checkpoint(str(backup)) if cluster.chief else None
    start = int(cluster.broadcast([float(latest.rsplit("-", 1)[1]) if latest else -1.0])[0])
    if start >= 0:
        path = backup / f"ckpt-{start}"
        if not Path(str(path) + ".index").is_file():
            raise UserError(f"{path}: the chief's checkpoint is not visible to {cluster.name}; the workspace "
                            f"must be on a file system shared by every worker")
        checkpoint.restore(str(path)).assert_existing_objects_matched()
        start = int(epoch_var.numpy())
    start = max(start, 0)
    history_path = run_dir / "history.csv"
    history = read_history(history_path, start) if cluster.chief else []
    run_info = workspace.read_json(run_dir / "run.json") or {}
    initial = run_info.get("initial") if start and cluster.chief else None
    # Early stopping's state (best, wait) and the best checkpoint's value, replayed from the chief's
    # history: the workers must agree on them to stop at the same epoch.
    best, wait, saved = _replay(history, initial, monitor, td.MIN_DELTA[mod.NAME])
    best, wait, saved = (float(v) for v in cluster.broadcast([min(best, 1e300), wait, min(saved, 1e300)]))
    if start:
        log.info("%s/%s: %s resuming after epoch %d (best %s %.4g)", mod.NAME, head, cluster.name, start,
                 monitor, best)
    if wait >= s["patience"] or start >= s["epochs"]:
        log.info("%s/%s: early stopping had already ended this run", mod.NAME, head)
        return

    val_sw = None if sw is None else np.where(sw > 0, 1.0, 0.0).astype(np.float32)
    train_ds = _distributed(strategy, x, y, rows["train"], batch, sw, seed=s["seed"], epochs=(start, s["epochs"]))
    val_ds = _distributed(strategy, x, y, rows["val"], batch, val_sw)
    val_steps = int(np.ceil(n_val / batch))
    train_step, eval_step, regularization = _steps(strategy, model, optimizer, losses, cluster.replicas,
                                                   sw is not None, km)
    write_dir = str(backup) if cluster.chief else tempfile.mkdtemp(prefix=f"newsdl-{mod.NAME}-worker-")
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=2)
    tmp_best = run_dir / (workspace.TMP_PREFIX + "best.keras")

    def evaluate() -> dict:
        return _evaluate(eval_step, regularization, val_ds, val_steps, n_val, losses, km)

    if start == 0:
        # The untrained model is a candidate too (see train.py): training must beat it on val.
        initial = evaluate()[monitor]
        best, wait, saved = initial, 0, initial - abs(td.MIN_DELTA[mod.NAME])
        if cluster.chief:
            model.save(tmp_best)
            os.replace(tmp_best, run_dir / "best.keras")
            workspace.write_json(run_dir / "run.json", {**workspace.read_json(run_dir / "run.json"), "initial": initial})
        log.info("%s/%s: untrained (initial) model: %s %.4g", mod.NAME, head, monitor, initial)

    seeds = EpochSeeds(s["seed"])
    seeds.set_model(model)
    iterator = iter(train_ds)
    # CSVLogger's columns: epoch, then the logs' keys sorted.
    columns = ["epoch", *sorted({"loss", *losses.columns(), "val_loss", *[f"val_{c}" for c in losses.columns()],
                                 monitor})]
    try:
        for epoch in range(start, s["epochs"]):
            t = time.monotonic()
            seeds.on_epoch_begin(epoch)
            total = 0.0
            parts = np.zeros(len(losses.names))
            for step in range(steps):
                n_global = min(batch, n_train - step * batch)
                out = train_step(iterator, tf.constant(1.0 if preempt.requested() else 0.0)).numpy()
                if out[1] > 0:
                    _preempted(cluster, "during epoch %d" % (epoch + 1))
                total += float(out[0]) * n_global
                parts += out[2:] * n_global
            logs = {"loss": total / n_train,
                    **{c: float(p) / n_train for c, p in zip(losses.columns(), parts)}}
            logs.update(evaluate())
            value = logs[monitor]
            if cluster.chief:
                _append_history(history_path, columns, {"epoch": epoch, **logs})
                if value < saved:
                    # ModelCheckpoint's save_best_only, written then renamed.
                    model.save(tmp_best)
                    os.replace(tmp_best, run_dir / "best.keras")
            saved = min(saved, value)
            # EarlyStopping's rule: an improvement by more than MIN_DELTA resets the count.
            best, wait = (value, 0) if value < best - abs(td.MIN_DELTA[mod.NAME]) else (best, wait + 1)
            epoch_var.assign(epoch + 1)
            # Last, so that a saved epoch has its history row and best checkpoint already written.
            manager.save(checkpoint_number=epoch + 1)
            if not cluster.chief:
                shutil.rmtree(write_dir, ignore_errors=True)
            dt = max(time.monotonic() - t, 1e-9)
            log.info("%s/%s epoch %d/%d (%s): loss %.4g, %s %.4g (%.1f s, %.0f articles/s)", mod.NAME, head,
                     epoch + 1, s["epochs"], cluster.name, logs["loss"], monitor, value, dt, n_train / dt)
            if cluster.total([1.0 if preempt.requested() else 0.0])[0] > 0:
                _preempted(cluster, "after epoch %d" % (epoch + 1))
            if wait >= s["patience"] and epoch > 0:
                log.info("%s/%s: early stopping after epoch %d", mod.NAME, head, epoch + 1)
                break
    finally:
        if not cluster.chief:
            shutil.rmtree(write_dir, ignore_errors=True)


def _preempted(cluster, when: str):
    """Leave training on every worker at once (a worker alone would hang its peers' collectives),
    keeping the last finished epoch's checkpoint: preempt.py's exit status asks for a requeue."""
    from newsdl.tasks import preempt

    name = preempt.requested() or "another worker's stop signal"
    log.warning("%s: %s received %s: leaving training; exit %d (a requeued job resumes after the last "
                "finished epoch)", cluster.name, name, when, defaults.PREEMPTED_EXIT)
    raise preempt.Preempted(name)


def _replay(history: list[dict], initial, monitor: str, min_delta: float) -> tuple[float, int, float]:
    """(EarlyStopping's best, its wait count, what the next best checkpoint must beat) after the
    ``history`` rows: the rules of train.py's callbacks, where a trained epoch replaces the untrained
    model only when better by MIN_DELTA, and any better epoch replaces a trained one."""
    best = np.inf if initial is None else float(initial)
    wait = 0
    threshold = best - abs(min_delta)
    for row in history:
        value = row.get(monitor)
        if value is None:
            continue
        if value < threshold:
            threshold = value
        if value < best - abs(min_delta):
            best, wait = value, 0
        else:
            wait += 1
    return best, wait, threshold


def _km_key(monitor: str, losses: _Losses, model, task: str, head: str) -> str | None:
    """The monitored mean km's name (geoloc), when the val pass must compute it; UserError when
    ``monitor`` is something this loop does not compute."""
    names = list(model.output_names)
    known = {"val_loss", *(f"val_{c}" for c in losses.columns())}
    km = "val_latlon_km" if len(names) > 1 else "val_km"
    if "latlon" in names:
        known.add(km)
    if monitor not in known:
        raise UserError(f"{task}/{head}: --distributed cannot compute the monitored value {monitor!r} yet "
                        f"(it computes {', '.join(sorted(known))}); train it without --distributed")
    return km if monitor == km else None


def _distributed(strategy, x: dict, y: dict, rows, batch: int, sample_weight, *, seed: int | None = None,
                 epochs: tuple[int, int] | None = None):
    """data.dataset's batches, cut per worker: every worker draws the same global batches (the same
    per-epoch permutation of (seed, epoch)) and keeps its contiguous slice of each, so the global
    batch is --batch-size whatever the number of workers."""
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
        w = tf.constant(sample_weight[rows]) if sample_weight is not None else None

        def cut(idx, k):
            size = tf.shape(idx, out_type=tf.int64)[0]
            idx = idx[size * k // replicas:size * (k + 1) // replicas]
            bx = {name: tf.gather(v, idx) for name, v in xs.items()}
            by = {name: tf.gather(v, idx) for name, v in ys.items()}
            return (bx, by, tf.gather(w, idx)) if w is not None else (bx, by)

        def slices(idx):
            return tf.data.Dataset.range(first, first + local).map(lambda k: cut(idx, k))

        if seed is None:
            ds = tf.data.Dataset.range(n).batch(batch)
        else:
            def one_epoch(epoch):
                return tf.data.Dataset.range(n).shuffle(n, seed=seed * 100_003 + epoch,
                                                        reshuffle_each_iteration=False).batch(batch)

            ds = tf.data.Dataset.range(*epochs).flat_map(one_epoch)
        options = tf.data.Options()
        options.deterministic = True
        # Sharded here, by example: tf.data must not shard it again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.map(lambda idx: cut(idx, first)) if local == 1 else ds.flat_map(slices)
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(make)


class _GlobalBatchDropout:
    """Dropout masks of the global batch, not of each replica's slice.

    A Dropout layer draws its mask from its seed generator and the shape of its input, so replicas
    that each hold a slice of the batch would draw other masks than one worker holding all of it,
    and the run would drift away from a single worker's by the dropout noise. Patched onto the
    model's Dropout layers (SpatialDropout included), each replica draws the layer's mask for the
    whole global batch, exactly as a single worker does (same generator, same shape, same call),
    and applies its own rows of it. The mask costs one uniform draw per element of the global
    batch, nothing next to the layer after it."""

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


def _steps(strategy, model, optimizer, losses: _Losses, replicas: int, weighted: bool, km: str | None):
    """The training and the val step, each one global batch; they return sums over the workers."""
    import tensorflow as tf

    total = tf.distribute.ReduceOp.SUM

    def unpack(batch):
        bx, by, bw = batch if weighted else (*batch, None)
        return bx, by, bw, tf.cast(tf.shape(tf.nest.flatten(bx)[0])[0], tf.float32)

    def regularization():
        return tf.add_n([tf.cast(v, tf.float32) for v in model.losses]) if model.losses else tf.constant(0.0)

    dropout = _GlobalBatchDropout(model)

    def replica_train(batch, stop):
        bx, by, bw, n_local = unpack(batch)
        ctx = tf.distribute.get_replica_context()
        n_global = ctx.all_reduce(total, n_local)
        # This replica's rows of the global batch: the slice _distributed gave it.
        dropout.size = tf.cast(n_global, tf.int32)
        dropout.offset = dropout.size * ctx.replica_id_in_sync_group // ctx.num_replicas_in_sync
        with tf.GradientTape() as tape:
            pred = model(bx, training=True)
            sums = losses.sums(by, pred, bw, n_local)
            # Summed over the workers: the global batch's mean loss, plus the regularisation once.
            loss = sums[0] / n_global + regularization() / replicas
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)  # all-reduces (sums) the gradients first
        # [loss, stop (a stop signal's flag: summed, every worker learns of any), each loss part]
        return tf.stack([loss, stop] + [p / n_global for p in sums[1:]])

    def replica_eval(batch):
        from newsdl.ops import great_circle_distance

        bx, by, bw, n_local = unpack(batch)
        pred = model(bx, training=False)
        sums = losses.sums(by, pred, bw, n_local)
        if km:
            sums.append(tf.reduce_sum(tf.cast(great_circle_distance(
                tf.cast(by["latlon"], tf.float32), tf.cast(pred["latlon"], tf.float32)), tf.float32)))
        return tf.stack(sums)

    # No AutoGraph: the steps have no tensor-dependent Python control flow, and AutoGraph would
    # convert the code they call too (newsdl.ops' loader, whose `global` assignments it breaks;
    # Keras's own steps opt out the same way).
    @tf.function(autograph=False)
    def train_step(iterator, stop):
        return strategy.reduce(total, strategy.run(replica_train, args=(next(iterator), stop)), axis=None)

    @tf.function(autograph=False)
    def eval_step(iterator):
        return strategy.reduce(total, strategy.run(replica_eval, args=(next(iterator),)), axis=None)

    return train_step, eval_step, regularization


def _evaluate(eval_step, regularization, val_ds, steps: int, n: int, losses: _Losses, km: str | None) -> dict:
    """The val values Keras's evaluate reports (each loss's mean over the split, the total with the
    regularisation), from sums over every worker's examples."""
    iterator = iter(val_ds)
    acc = 0.0
    for _ in range(steps):
        acc = acc + eval_step(iterator).numpy().astype(np.float64)
    out = {"val_loss": float(acc[0]) / n + float(regularization().numpy())}
    for column, value in zip(losses.columns(), acc[1:1 + len(losses.names)]):
        out[f"val_{column}"] = float(value) / n
    if km:
        out[km] = float(acc[-1]) / n
    return out


def _append_history(path: Path, columns: list[str], row: dict) -> None:
    """One epoch's row of history.csv (CSVLogger's layout: epoch, then the logs)."""
    import csv

    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: (int(v) if k == "epoch" else repr(float(v))) for k, v in row.items()})
        fh.flush()
        os.fsync(fh.fileno())
