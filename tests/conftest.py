"""Shared fixtures: a small sample corpus, its ingested workspace, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run `python -m newsdl ARGS` in a subprocess, as a user would; never raises on exit status."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "newsdl", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    """60 sample articles with their images (folder with articles.jsonl and images/)."""
    from newsdl.sample.corpus import write_corpus

    out = tmp_path_factory.mktemp("sample-corpus")
    write_corpus(out, n_articles=60, seed=7)
    return out


@pytest.fixture(scope="session")
def ingested_workspace(tmp_path_factory, sample_corpus) -> Path:
    """A workspace whose ingest stage is done on the sample corpus. Treat it as read-only."""
    from newsdl.ingest.run import ingest

    ws = tmp_path_factory.mktemp("workspace")
    ingest([sample_corpus / "articles.jsonl"], ws, images_root=sample_corpus)
    return ws


# The private SLURM cluster (tests/slurm_harness.py): a session fixture for the scheduler tests.
from slurm_harness import slurm_cluster  # noqa: E402,F401
