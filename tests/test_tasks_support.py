"""Shared by the task tests: a featurized workspace and a CLI runner for train/evaluate/predict.

The featurized workspace is the conftest's ingested sample corpus (60 articles) with
`newsdl featurize` run on it with fast settings: 16-d word2vec, one pass, and the small random
CNN as the image backbone. Nothing here is a test; it is a module so that the task test files
can share its session fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
