"""Shared by the task tests: a featurized workspace and a CLI runner for train/evaluate/predict.

The featurized workspace is the conftest's ingested sample corpus (60 articles) with
`newsdl featurize` run on it with fast settings: 16-d word2vec, one pass, and the small random
CNN as the image backbone. Nothing here is a test; it is a module so that the task test files
can share its session fixtures.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]

# Fast featurize settings for 60 articles: what the features are made of does not matter to the
# task tests, only that every family is there in the contract's layout.
FAST_FEATURIZE = dict(vector_size=16, min_count=1, epochs=1, backbone="small_cnn", weights="random",
                      image_size=32)
# Two epochs of the smallest batches: every code path of training runs, in seconds.
FAST_TRAIN = dict(epochs=2, batch_size=16, seed=7)

_NEWSDL = (sys.executable, "-m", "newsdl")


def run_newsdl(*args, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`newsdl ARGS` in a subprocess from the repository root, as conftest's ``run_cli``."""
    return run_cli(*args, env=env, cwd=ROOT, timeout=timeout)


def popen_newsdl(*args, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([*_NEWSDL, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=full_env, cwd=ROOT)


def rerecord(folder: Path) -> None:
    """Record a stage's outputs as they are now, as if the stage had written them: for tests that
    edit an output on purpose (the stages refuse outputs changed behind their manifest's back)."""
    import json

    from newsdl import workspace

    path = folder / workspace.MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for name in manifest["outputs"]:
        st = (folder / name).stat()
        manifest["outputs"][name] = {"sha256": workspace.sha256_file(folder / name), "bytes": st.st_size,
                                     "mtime_ns": st.st_mtime_ns}
    workspace.write_json(path, manifest)


def head_dir(folder: Path, head: str) -> Path:
    """runs/RUN/heads/HEAD/ of a task folder: the current run's (config.json's "run"), else the
    newest run's (a run in progress or killed); a path that does not exist yet when there is none."""
    import json

    from newsdl.tasks import layout

    try:
        run = json.loads((folder / "config.json").read_text())["run"]
    except (OSError, KeyError, ValueError):
        runs = layout.run_ids(folder)
        run = runs[-1] if runs else "no-run-yet"
    return layout.head_folder(layout.run_folder(folder, run), head)


def checkpoint_epoch(backup) -> int:
    """The epoch of the training loop's latest checkpoint in ``backup`` (runs/RUN/heads/HEAD/backup/,
    or a function that finds it, for a run that has not named its folder yet): the N of the ckpt-N
    that the ``checkpoint`` file names, once its index is written; 0 before any."""
    backup = backup() if callable(backup) else backup
    try:
        text = (backup / "checkpoint").read_text(encoding="utf-8")
    except OSError:
        return 0
    m = re.search(r'^model_checkpoint_path: ".*?ckpt-(\d+)"', text, re.M)
    return int(m.group(1)) if m and (backup / f"ckpt-{m.group(1)}.index").is_file() else 0


def kill_after_checkpoint(proc: subprocess.Popen, backup, epochs: int, timeout: float = 300) -> int:
    """SIGKILL a `newsdl train` process as soon as its loop has checkpointed ``epochs`` epochs
    (nothing to flush, nothing to clean up: as a crash or a killed job); the epochs checkpointed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint_epoch(backup) >= epochs:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"training ended before it could be killed: {proc.stdout.read()}"
    return checkpoint_epoch(backup)


def assert_same_training(a: Path, b: Path, task: str) -> None:
    """Two workspaces' trainings of ``task`` are the same run: the same history (every epoch's
    losses and val values), the same outcome (head, best epoch, epochs run, best val value) and
    the very same weights."""
    import json

    import numpy as np

    from newsdl.tasks import get

    fa, fb = a / "models" / task, b / "models" / task
    assert (fa / "history.csv").read_text() == (fb / "history.csv").read_text()
    sa, sb = (json.loads((f / "config.json").read_text())["summary"] for f in (fa, fb))
    keys = ("head", "monitor", "val_best", "best_epoch", "epochs_run", "n_train", "n_val")
    assert {k: sa[k] for k in keys} == {k: sb[k] for k in keys}
    wa, wb = (get(task).load_model(f / "model.keras").get_weights() for f in (fa, fb))
    assert len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


def check_resume_keeps_the_count(featurized: Path, tmp_path: Path, task: str, args: list[str]) -> dict:
    """Train ``task`` with ``args`` uninterrupted, where early stopping must end the run after
    non-improving epochs; train it again, killed once the epoch before that stop is checkpointed
    (early stopping's count then above 0), and rerun it: the resumed run trains that one last epoch
    and stops, ending as the uninterrupted run did. The uninterrupted run's summary."""
    import json

    cap = int(args[args.index("--epochs") + 1])
    whole, killed = copy_workspace(featurized, tmp_path / "whole"), copy_workspace(featurized, tmp_path / "killed")
    result = run_newsdl("train", task, "-w", whole, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((whole / "models" / task / "config.json").read_text())["summary"]
    stop = summary["epochs_run"]
    # What the test needs of the settings: early stopping ended the run, and the epoch before its
    # stop was no improvement (so its count there is above 0).
    assert stop < cap and summary["best_epoch"] < stop - 1, summary
    name = task if summary["head"] == "default" else f"{task}/{summary['head']}"
    assert f"{name}: early stopping after epoch {stop}:" in result.stderr

    proc = popen_newsdl("train", task, "-w", killed, *args)
    folder = killed / "models" / task
    assert kill_after_checkpoint(proc, lambda: head_dir(folder, summary["head"]) / "backup", stop - 1) == stop - 1
    run_dir = head_dir(folder, summary["head"])
    assert not (run_dir / "done.json").exists() and not (killed / "models" / task / "manifest.json").exists()
    resumed = run_newsdl("train", task, "-w", killed, *args)
    # The resumed run is the killed one, in its own folder: no second run folder.
    assert head_dir(folder, summary["head"]) == run_dir and len(list((folder / "runs").iterdir())) == 1
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{name}: resuming after epoch {stop - 1}" in resumed.stderr
    assert f"{name} epoch {stop - 1}/{cap}:" not in resumed.stderr
    assert f"{name} epoch {stop}/{cap}:" in resumed.stderr and f"epoch {stop + 1}/{cap}:" not in resumed.stderr
    assert f"{name}: early stopping after epoch {stop}:" in resumed.stderr
    assert_same_training(whole, killed, task)
    return summary


def copy_workspace(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models"))
    return dst


@pytest.fixture(scope="session")
def featurized_workspace(ingested_workspace, tmp_path_factory) -> Path:
    """The ingested sample corpus with text and image features (read-only: copy it to change it)."""
    from newsdl.features import run_featurize

    ws = copy_workspace(ingested_workspace, tmp_path_factory.mktemp("featurized") / "ws")
    run_featurize(ws, **FAST_FEATURIZE)
    return ws


@pytest.fixture(scope="session")
def trained_workspace(featurized_workspace, tmp_path_factory) -> Path:
    """The featurized workspace with every task trained (2 epochs) and evaluated."""
    from newsdl.tasks import TASKS, evaluate_task, train_task

    ws = copy_workspace(featurized_workspace, tmp_path_factory.mktemp("trained") / "ws")
    for task in TASKS:
        train_task(ws, task, **FAST_TRAIN)
        evaluate_task(ws, task)
    return ws


def check_run_folder(folder: Path, head: str) -> dict:
    """The task trained in runs/RUN/heads/HEAD/, like every task, and its model is that run's best
    epoch's; returns config.json."""
    import json

    run_dir = head_dir(folder, head)
    for name in ("run.json", "best.keras", "history.csv", "done.json", "backup/checkpoint"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "best.keras").read_bytes() == (folder / "model.keras").read_bytes()
    assert not (folder / "run").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["heads"][head] == json.loads((run_dir / "done.json").read_text())
    return config
