"""The CLI's fast paths, the sample corpus generator, `status` and `demo`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import run_cli
from newsdl.sample.corpus import write_corpus


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_version_and_help_do_not_import_tensorflow():
    code = ("import sys; from newsdl.cli import app; "
            "print('tensorflow' in sys.modules, 'pandas' in sys.modules, 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("newsdl ")
    assert run_cli("-V").stdout == result.stdout
    assert run_cli("--help").returncode == 0


def test_unknown_command_is_usage_error():
    result = run_cli("no-such-command")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_sample_corpus_is_deterministic_for_a_seed(tmp_path):
    write_corpus(tmp_path / "a", n_articles=15, seed=3)
    write_corpus(tmp_path / "b", n_articles=15, seed=3)
    write_corpus(tmp_path / "c", n_articles=15, seed=4)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a["articles.jsonl"] != c["articles.jsonl"]
    assert any(name.endswith(".png") for name in a) and any(name.endswith(".jpg") for name in a)


def test_sample_corpus_cli_and_bad_count(tmp_path):
    ok = run_cli("sample-corpus", tmp_path / "out", "--articles", "5", "--no-images")
    assert ok.returncode == 0, ok.stderr
    assert len((tmp_path / "out" / "articles.jsonl").read_text().splitlines()) == 5
    bad = run_cli("sample-corpus", tmp_path / "out2", "--articles", "0")
    assert bad.returncode == 2 and "--articles 0" in bad.stderr


def test_status_reports_each_stage(ingested_workspace, tmp_path):
    result = run_cli("status", "-w", ingested_workspace)
    assert result.returncode == 0
    lines = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert lines["ingest"] == "done" and lines["features"] in ("pending", "done")
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "articles.parquet").write_bytes(b"partial")
    assert "incomplete" in run_cli("status", "-w", tmp_path).stdout
    as_json = json.loads(run_cli("status", "-w", ingested_workspace, "--json").stdout)
    assert as_json["workspace"] == str(ingested_workspace) and as_json["jobs"] == []
    assert {r["stage"]: r["state"] for r in as_json["stages"]}["ingest"] == "done"
    missing = run_cli("status", "-w", tmp_path / "nonexistent")
    assert missing.returncode == 2 and "no such workspace folder" in missing.stderr


def test_status_flags_metrics_older_than_their_model(tmp_path):
    from newsdl import workspace
    from newsdl.status import stage_states

    folder = tmp_path / "models" / "source"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "model.keras").write_bytes(b"model")
    workspace.write_manifest(folder, "train", inputs=[], config={}, counts={}, outputs=["model.keras"],
                             started=workspace.now())
    old = (folder / "model.keras").stat().st_mtime_ns - 10**9
    os.utime(folder / "metrics.json", ns=(old, old))
    row = {r["stage"]: r for r in stage_states(tmp_path)}["models/source"]
    assert row["state"] == "done" and "older than the model" in row["detail"]
    os.utime(folder / "metrics.json", ns=(old + 2 * 10**9, old + 2 * 10**9))
    assert "older" not in {r["stage"]: r for r in stage_states(tmp_path)}["models/source"]["detail"]


def test_demo_runs_end_to_end(tmp_path):
    result = run_cli("demo", "-w", tmp_path / "ws", "--articles", "40")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "articles accepted" in result.stdout
    assert (tmp_path / "ws" / "ingest" / "manifest.json").is_file()
    again = run_cli("demo", "-w", tmp_path / "ws", "--articles", "40")
    assert again.returncode == 0 and "up to date" in again.stderr
