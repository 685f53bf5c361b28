"""`--distributed slurm|tf_config`: the workers of a multi-worker job, for the training loop.

Each worker is one process (one SLURM task: one per node, or one per GPU), and all of them run
`tf.distribute.MultiWorkerMirroredStrategy`: every worker holds a copy of the weights, computes the
gradient of its share of each global batch, and the gradients are summed across workers before
each identical update (loop.py says how a run on N workers stays the one-process run). The cluster
comes from `SlurmClusterResolver` (``slurm``: the `srun` step's SLURM_PROCID, SLURM_STEP_NODELIST,
SLURM_STEP_TASKS_PER_NODE) or from TF_CONFIG (``tf_config``: any other launcher). A restarted job
restarts all of its workers (one that dies takes the others' collectives down with it), which
resume from the chief's last checkpoint: the workspace must be on a file system all of them see.
"""

from __future__ import annotations

import json
import os
import shutil

from newsdl import defaults
from newsdl.errors import UserError

MODES = ("none", "slurm", "tf_config")


def start(mode: str):
    """The loop's Cluster for ``mode`` (none: this process alone). The strategy must exist before
    TensorFlow's runtime starts (it configures the collectives), so call this first."""
    from newsdl.tasks.loop import Cluster

    check_environment(mode)
    if mode == "none":
        return Cluster()
    import tensorflow as tf

    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver(mode))
    except RuntimeError as exc:
        raise UserError(f"--distributed: cannot start the multi-worker strategy ({exc}); start it before "
                        f"anything else uses TensorFlow in this process") from None
    return Cluster(strategy)


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
