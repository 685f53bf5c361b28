"""`newsdl train TASK --distributed slurm|tf_config` (newsdl.tasks.cluster, newsdl.tasks.loop): for
every task, two workers on 127.0.0.1 against the single-process `newsdl train`; a job killed
mid-training and restarted; `srun -n 2` in `sbatch --ntasks=2` on the private SLURM cluster of
tests/slurm_harness.py.

The comparisons hold the distributed run's per-epoch losses to defaults.DIST_VAL_LOSS_RTOL of the
single-process run's (same global batch and seed), and its weights to WEIGHT_ATOL; measured here,
the losses differ by about 2e-7 relative (float32 rounding: the all-reduce adds in another order).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from newsdl import defaults
from test_tasks_support import ROOT, copy_workspace, featurized_workspace, head_dir, run_newsdl  # noqa: F401

# Small batches, so that 42 training articles make 3 global batches (16, 16, 10: each cut in two
# per worker; caption and illustrate: 88 images, 6 batches); 4 epochs, with a patience that lets all
# of them run, for the restart test.
SETTINGS = ["--epochs", "4", "--batch-size", "16", "--seed", "7", "--patience", "12"]
# Each task once; geoloc's cells head (the regress head's layers are a subset of what it exercises:
# the trunk, the gazetteer's trust and median, plus the cells' softmax).
TASK_ARGS = {"source": (), "popularity": (), "geoloc": ("--head", "cells"), "caption": (), "illustrate": ()}
# Weights are held to an absolute bound, not a relative one: Adam divides each step by
# sqrt(v) + 1e-7, so where a gradient nearly cancels (an embedding row that few articles use) its
# float32 rounding, ~1e-9, moves the weight by up to lr x 1e-9 / 1e-7 per step (2e-5 here). Measured:
# 8e-5 at most after 4 epochs, on word-embedding rows; half of an Adam step (lr 2e-3) is the bound.
WEIGHT_ATOL = 1e-3


def _no_slurm_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "TF_CONFIG"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _launch(ws: Path, workers: int, task: str, *args: str, tag: str = "run") -> list[tuple[subprocess.Popen, Path]]:
    """``workers`` processes of `newsdl train TASK --distributed tf_config` on 127.0.0.1."""
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(workers)]
    procs = []
    for index in range(workers):
        conf = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        log = ws.parent / f"{tag}-worker{index}.log"
        with open(log, "w") as fh:
            procs.append((subprocess.Popen(
                [sys.executable, "-m", "newsdl", "train", task, "-w", str(ws), "--distributed", "tf_config",
                 *SETTINGS, *args],
                stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**_no_slurm_env(), "TF_CONFIG": json.dumps(conf), "PYTHONUNBUFFERED": "1"}), log))
    return procs


def _wait(procs, timeout: float = 400) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for proc, log in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            pytest.fail(f"distributed training still running after {timeout:.0f} s: {log.read_text()[-3000:]}")
    return codes


def _history(folder: Path) -> list[dict]:
    with open(folder / "history.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _weights(task: str, path: Path) -> list[np.ndarray]:
    from newsdl.tasks import get

    return get(task).load_model(path).get_weights()


def _assert_matches(folder: Path, reference: Path) -> None:
    """Same per-epoch val loss within the stated tolerance; same chosen weights."""
    ours, theirs = _history(folder), _history(reference)
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=defaults.DIST_VAL_LOSS_RTOL), (ours, theirs)
        assert a["loss"] == pytest.approx(b["loss"], rel=defaults.DIST_VAL_LOSS_RTOL), (ours, theirs)
    ours_w, theirs_w = _weights(folder.name, folder / "model.keras"), _weights(folder.name, reference / "model.keras")
    assert [w.shape for w in ours_w] == [w.shape for w in theirs_w]
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(ours_w, theirs_w))
    assert worst <= WEIGHT_ATOL, worst


# ------------------------------------------------------------------ usage errors (fast)

def _newsdl(*args) -> subprocess.CompletedProcess:
    """`newsdl ARGS` outside any SLURM job or TF_CONFIG cluster."""
    return subprocess.run([sys.executable, "-m", "newsdl", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=_no_slurm_env(), timeout=120)


def test_distributed_usage_errors_exit_2(tmp_path):
    r = _newsdl("train", "source", "-w", tmp_path, "--distributed", "slurm")
    assert r.returncode == 2, r.stderr
    assert "SLURM_PROCID is not set" in r.stderr and "srun" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _newsdl("train", "source", "-w", tmp_path, "--distributed", "tf_config")
    assert r.returncode == 2 and "TF_CONFIG" in r.stderr, r.stderr
    r = _newsdl("train", "source", "-w", tmp_path, "--distributed", "mpi")
    assert r.returncode == 2 and "--distributed mpi" in r.stderr, r.stderr


def test_slurm_resolver_lays_out_cpu_tasks(monkeypatch):
    """Two nodes, one task each, no GPU: one worker per task at the job's port, none given a GPU."""
    from newsdl.tasks import cluster

    for name, value in {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "cn[07-08]",
                        "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "NEWSDL_DIST_PORT": "24000"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)  # no nvidia-smi on this node
    resolver = cluster.cluster_resolver("slurm")
    assert resolver.cluster_spec().as_dict() == {"worker": ["cn07:24000", "cn08:24000"]}
    assert resolver.get_task_info() == ("worker", 1)
    assert resolver.num_accelerators() == {"GPU": 0}
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    # Two tasks on one node take consecutive ports; the default port follows the job id.
    monkeypatch.setenv("SLURM_STEP_NODELIST", "cn07")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "2")
    monkeypatch.delenv("NEWSDL_DIST_PORT")
    monkeypatch.setenv("SLURM_JOB_ID", "1001")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    port = cluster._slurm_port()
    assert defaults.DIST_PORT_BASE <= port < 32768 - defaults.DIST_PORT_STRIDE
    assert cluster.cluster_resolver("slurm").cluster_spec().as_dict() == {
        "worker": [f"cn07:{port}", f"cn07:{port + 1}"]}


def test_a_loss_over_the_whole_batch_is_the_same_cut_in_two():
    """illustrate's contrastive loss needs the global batch: each replica's rows, scored against the
    embeddings gathered from every replica, give the one-process loss of those rows."""
    import tensorflow as tf

    from newsdl.tasks import get
    from newsdl.tasks.task import Batch

    rng = np.random.default_rng(3)
    both = rng.normal(size=(10, 8)).astype(np.float32)
    both /= np.linalg.norm(both, axis=1, keepdims=True)
    task = get("illustrate")
    whole = task.losses({}, {"embeddings": tf.constant(both)}, Batch())["loss"].numpy()
    halves = []
    for lo, hi in ((0, 6), (6, 10)):
        # The other replica's rows come from the gather: embeddings [text | image] of every row.
        full = {"text": tf.constant(both[:, :4]), "image": tf.constant(both[:, 4:])}

        def gather(local, full=full):
            return full["text"] if np.allclose(local.numpy(), both[lo:hi, :4]) else full["image"]

        halves.append(task.losses({}, {"embeddings": tf.constant(both[lo:hi])}, Batch(lo, gather))["loss"].numpy())
    np.testing.assert_allclose(np.concatenate(halves), whole, rtol=1e-6)
    assert whole.shape == (10,) and np.all(whole > 0)


# ------------------------------------------------------------------ two workers on 127.0.0.1

def _side_by_side(featurized_workspace, root: Path, task: str) -> dict:  # noqa: F811
    """The single-process `newsdl train TASK` and the same with 2 tf_config workers, run side by
    side: {"single": ws, "two": ws, "codes": [...], "logs": [...]}."""
    single = copy_workspace(featurized_workspace, root / "single" / "ws")
    two = copy_workspace(featurized_workspace, root / "two" / "ws")
    with open(root / "single.log", "w") as fh:
        reference = subprocess.Popen([sys.executable, "-m", "newsdl", "train", task, "-w", str(single),
                                      *SETTINGS, *TASK_ARGS[task]], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env=_no_slurm_env())
    procs = _launch(two, 2, task, *TASK_ARGS[task])
    codes = _wait(procs + [(reference, root / "single.log")])
    return {"single": single, "two": two, "codes": codes, "logs": [log for _, log in procs] + [root / "single.log"]}


@pytest.fixture(scope="module")
def runs(featurized_workspace, tmp_path_factory):  # noqa: F811
    """source, single-process and on two workers (the restart and SLURM tests compare with it)."""
    return _side_by_side(featurized_workspace, tmp_path_factory.mktemp("distributed"), "source")


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASK_ARGS))
def test_two_workers_match_a_single_process_and_evaluate(task, runs, featurized_workspace, tmp_path):  # noqa: F811
    """Every task: the same per-epoch losses (train and val), the same monitored values and the same
    weights as one process, for the same global batch and seed; then evaluate reads the model."""
    result = runs if task == "source" else _side_by_side(featurized_workspace, tmp_path, task)
    logs = [p.read_text() for p in result["logs"]]
    assert result["codes"] == [0, 0, 0], "\n".join(text[-2000:] for text in logs)
    assert "worker done (2 workers)" in logs[1] and f"train {task} done" in logs[0]
    folder = result["two"] / "models" / task
    head = json.loads((folder / "config.json").read_text())["head"]
    for name in ("model.keras", "config.json", "history.csv", "manifest.json"):
        assert (folder / name).is_file(), name
    assert (head_dir(folder, head) / "best.keras").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["distributed"] == "tf_config" and config["summary"]["workers"] == 2
    assert [r["epoch"] for r in _history(folder)] == [0, 1, 2, 3]
    _assert_matches(folder, result["single"] / "models" / task)
    monitor = config["summary"]["monitor"]
    for a, b in zip(_history(folder), _history(result["single"] / "models" / task)):
        assert a[monitor] == pytest.approx(b[monitor], rel=defaults.DIST_VAL_LOSS_RTOL)
    assert not any(p.name.startswith(".tmp-") for p in folder.rglob("*"))

    r = run_newsdl("evaluate", task, "-w", result["two"], timeout=300)
    assert r.returncode == 0, r.stderr
    from newsdl.tasks import get

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["task"] == task and list(metrics["test"])[:len(get(task).metric_keys)] == list(get(task).metric_keys)


@pytest.mark.slow
def test_a_killed_job_resumes_after_its_last_epoch(runs, featurized_workspace, tmp_path):  # noqa: F811
    """Both workers killed (SIGKILL) once epoch 2's checkpoint is saved; the relaunched job restores
    it, runs only the epochs left, and ends with the uninterrupted run's history and weights."""
    ws = copy_workspace(featurized_workspace, tmp_path / "ws")
    procs = _launch(ws, 2, "source", tag="killed")
    deadline = time.monotonic() + 300
    while True:
        backup = head_dir(ws / "models" / "source", "default") / "backup"  # named once the run starts
        if (backup / "ckpt-2.index").is_file() and "ckpt-2" in _read(backup / "checkpoint"):
            break
        assert all(p.poll() is None for p, _ in procs), [log.read_text()[-2000:] for _, log in procs]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    for proc, _ in procs:
        proc.send_signal(signal.SIGKILL)
    _wait(procs)
    folder = ws / "models" / "source"
    assert not (folder / "manifest.json").exists()

    procs = _launch(ws, 2, "source", tag="restarted")
    codes = _wait(procs)
    logs = [log.read_text() for _, log in procs]
    assert codes == [0, 0], "\n".join(text[-2000:] for text in logs)
    resumed = [int(line.split("resuming after epoch ")[1].split()[0])
               for line in logs[0].splitlines() if "resuming after epoch" in line]
    assert resumed and 2 <= resumed[0] < 4, logs[0][-3000:]
    # Epochs after the restored one only: none repeated, none lost.
    trained = [int(line.split(" epoch ")[1].split("/")[0]) for line in logs[0].splitlines()
               if line.split("INFO newsdl.tasks: ")[-1].startswith("source epoch ")]
    assert trained == list(range(resumed[0] + 1, 5)), logs[0][-3000:]
    assert [r["epoch"] for r in _history(folder)] == [0, 1, 2, 3]
    _assert_matches(folder, runs["two"] / "models" / "source")
    # The relaunched job resumed the killed job's run, in its folder: one run, the current one.
    assert head_dir(folder, "default").parent.parent == folder / "runs" / json.loads(
        (folder / "config.json").read_text())["run"] and len(list((folder / "runs").iterdir())) == 1


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# ------------------------------------------------------------------ a real scheduler

@pytest.mark.slow
def test_srun_two_tasks_in_sbatch(slurm_cluster, runs, featurized_workspace, tmp_path):  # noqa: F811
    ws = copy_workspace(featurized_workspace, tmp_path / "ws")
    out = tmp_path / "job.out"
    script = "\n".join([
        "#!/bin/bash",
        f"#SBATCH --output={out}",
        "#SBATCH --ntasks=2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=00:10:00",
        f"cd {ROOT}",
        f"srun -n 2 {sys.executable} -m newsdl train source -w {ws} --distributed slurm {' '.join(SETTINGS)}",
        "",
    ])
    job = slurm_cluster.sbatch(script)
    records = slurm_cluster.wait_job(job, timeout=400)
    text = _read(out)
    assert [r.get("JobState") for r in records] == ["COMPLETED"], text[-3000:]
    assert "train source done" in text and "worker done (2 workers)" in text, text[-3000:]
    assert "worker 0 of 2, global batch 16" in text and "worker 1 of 2, global batch 16" in text
    folder = ws / "models" / "source"
    config = json.loads((folder / "config.json").read_text())
    assert config["distributed"] == "slurm" and config["summary"]["workers"] == 2
    _assert_matches(folder, runs["single"] / "models" / "source")
