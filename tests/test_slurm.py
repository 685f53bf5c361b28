"""`newsdl submit` against a real SLURM (the private cluster of tests/slurm_harness.py): the whole
chain with featurize as a 2-task array, compared with a local run; a training job preempted with
SIGUSR1 that requeues and resumes without losing a finished epoch; a failing stage whose
dependants never run, and the report that names it and its log.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from newsdl.hpc import config as hpc_config
from newsdl.hpc import scripts

pytestmark = pytest.mark.slow

# Jobs run this checkout's newsdl, from the venv the tests run in.
NEWSDL = str(Path(sys.executable).parent / "newsdl")
SMALL_IMAGES = ["--backbone", "small_cnn", "--weights", "random"]


def _config(path: Path, extra: str = "") -> Path:
    path.write_text(f"""
newsdl = "{NEWSDL}"
shards = 2
tasks = ["source"]
[resources]
time = "00:20:00"
mem = "1G"
cpus = 1
[stage.featurize]
args = {json.dumps(SMALL_IMAGES)}
[stage.train]
args = ["--epochs", "2"]
{extra}
""")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from newsdl.sample.corpus import write_corpus

    out = tmp_path_factory.mktemp("slurm-corpus")
    write_corpus(out, n_articles=120, seed=7)
    return out


@pytest.fixture(scope="module")
def chain(slurm_cluster, corpus, tmp_path_factory):
    """The full chain, submitted with --wait: (workspace, the submit process)."""
    root = tmp_path_factory.mktemp("slurm-chain")
    ws = root / "ws"
    proc = slurm_cluster.run([NEWSDL, "submit", corpus / "articles.jsonl", "-w", ws, "--config",
                              _config(root / "cluster.toml"), "--wait", "--poll", "1"], check=False, timeout=900)
    return ws, proc


def _features(ws: Path) -> dict:
    table = pq.read_table(sorted((ws / "features" / "images").glob("part-*.parquet")))
    return dict(zip(table.column("image_id").to_pylist(), np.asarray(table.column("fc7").to_pylist())))


def test_chain_runs_every_stage_and_matches_a_local_run(chain, corpus, tmp_path):
    ws, proc = chain
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [j["stage"] for j in jobs] == ["ingest", "featurize", "merge", "train-source", "evaluate-source"]
    assert "all 5 jobs done" in proc.stderr
    feat = jobs[1]
    logs = [Path(feat["log"].replace("%a", str(i))) for i in range(2)]
    assert all(p.is_file() for p in logs), logs
    assert "images 0/2" in logs[0].read_text()
    assert "images 1/2" in logs[1].read_text()


    # The same stages by hand, on this machine, without SLURM and without shards.
    local = tmp_path / "local"
    assert run_cli("ingest", corpus / "articles.jsonl", "-w", local).returncode == 0
    done = run_cli("featurize", "-w", local, *SMALL_IMAGES)
    assert done.returncode == 0, done.stderr

    for name in ("articles.parquet", "images.parquet"):
        assert pq.read_table(ws / "ingest" / name).equals(pq.read_table(local / "ingest" / name)), name
    sharded, whole = _features(ws), _features(local)
    assert len(sharded) == len(whole) == pq.read_metadata(ws / "ingest" / "images.parquet").num_rows
    assert sharded.keys() == whole.keys()
    diff = max(float(np.abs(sharded[k] - whole[k]).max()) for k in whole)
    assert diff < 1e-4, f"features of an image differ between the 2-shard array and a local run by {diff}"
    print(f"chain: {len(whole)} images, largest feature difference sharded vs local {diff:.3g}")
    assert sorted(p.name for p in (ws / "features" / "images").glob("part-*")) == \
        ["part-0-of-2.parquet", "part-1-of-2.parquet"]
    manifest = json.loads((ws / "features" / "manifest.json").read_text())
    local_manifest = json.loads((local / "features" / "manifest.json").read_text())
    assert manifest["counts"]["images"] == local_manifest["counts"]["images"]
    text, local_text = pq.read_table(ws / "features" / "text.parquet"), pq.read_table(local / "features" / "text.parquet")
    assert text.column("article_id").equals(local_text.column("article_id"))
    assert text.column("tokens").equals(local_text.column("tokens"))

    metrics = json.loads((ws / "models" / "source" / "metrics.json").read_text())
    assert {"task", "n_train", "n_test", "test", "baselines"} <= set(metrics)
    assert {"accuracy", "macro_f1"} <= set(metrics["test"])
    assert all({"accuracy", "macro_f1"} <= set(b) for b in metrics["baselines"].values())


def test_status_reports_each_job(slurm_cluster, chain):
    ws, _ = chain
    out = slurm_cluster.run([NEWSDL, "status", "-w", ws]).stdout
    for stage in ("ingest", "featurize", "merge", "train-source", "evaluate-source"):
        assert re.search(rf"^\s+{stage}\s+done\s+job \d+: ", out, re.M), out
    assert "featurize            done      job" in out and "2 task(s) completed" in out


def test_usr1_requeues_training_which_resumes_without_losing_an_epoch(slurm_cluster, chain, tmp_path):
    import time

    src, proc = chain
    assert proc.returncode == 0, proc.stderr
    ws = tmp_path / "ws"
    shutil.copytree(src, ws, ignore=shutil.ignore_patterns("models", "jobs"))
    epochs = 8
    cfg = hpc_config.parse({"newsdl": NEWSDL, "max_requeues": 2}, "test")
    spec = scripts.JobSpec(
        "train-popularity", "train",
        (NEWSDL, "train", "popularity", "-w", str(ws), "--epochs", str(epochs), "--batch-size", "4", "--patience", "99"),
        hpc_config.Resources(time="00:20:00", cpus=1, mem="1G"), ws / "jobs" / "logs")
    spec.log_dir.mkdir(parents=True)
    script = ws / "jobs" / "train-popularity.sbatch"
    script.write_text(scripts.render(spec, cfg))
    job = slurm_cluster.sbatch(script)

    def run_history() -> Path:  # runs/RUN/heads/default/history.csv: RUN is named once training starts
        found = sorted((ws / "models" / "popularity").glob("runs/*/heads/default/history.csv"))
        return found[-1] if found else ws / "models" / "popularity" / "runs" / "none" / "history.csv"

    deadline = time.monotonic() + 600
    while not ((history := run_history()).is_file() and len(history.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline, "no epoch finished in 10 minutes"
        assert slurm_cluster.job_state(job) in ("PENDING", "RUNNING"), slurm_cluster.job_state(job)
        time.sleep(0.2)
    finished_at_signal = len(history.read_text().splitlines()) - 1
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", job])

    records = slurm_cluster.wait_job(job, timeout=600)
    log = spec.log(job, 0).read_text()
    assert records[0]["JobState"] == "COMPLETED", (records, log[-3000:])
    assert records[0]["Restarts"] == "1", log[-3000:]
    assert "got SIGUSR1" in log and "exit 75" in log and "requeueing" in log
    assert "run 2 (requeues so far: 1 of at most 2)" in log
    resumed = int(re.search(r"resuming after epoch (\d+)", log)[1])
    assert resumed >= finished_at_signal, "a finished epoch was lost"
    assert run_history() == history, "the requeued job resumes its run, in the same run folder"
    rows = [int(line.split(",")[0]) for line in history.read_text().splitlines()[1:]]
    assert rows == list(range(epochs)), f"each epoch exactly once: {rows}"
    print(f"USR1: {finished_at_signal} epoch(s) finished at the signal; Restarts={records[0]['Restarts']}; "
          f"resumed after epoch {resumed}; history epochs {rows}")
    assert json.loads((ws / "models" / "popularity" / "manifest.json").read_text())["stage"] == "train"


def test_a_failing_stage_stops_its_dependants_and_is_reported(slurm_cluster, corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text((corpus / "articles.jsonl").read_text().splitlines()[0] + "\n{not json\n")
    ws = tmp_path / "ws"
    cfg = _config(tmp_path / "cluster.toml", '[stage.ingest]\nargs = ["--strict"]\n')
    proc = slurm_cluster.run([NEWSDL, "submit", bad, "-w", ws, "--images-root", corpus, "--config", cfg,
                              "--wait", "--poll", "1"], check=False, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    print(proc.stderr)
    jobs = {j["stage"]: j for j in map(json.loads, filter(lambda s: s.startswith("{"), proc.stdout.splitlines()))}
    ingest_log = jobs["ingest"]["log"]
    assert f"stage ingest failed (job {jobs['ingest']['job_id']}, FAILED (exit 2): log {ingest_log})" in proc.stderr
    assert "newsdl: error" in Path(ingest_log).read_text()
    assert "never ran, cancelled by the scheduler: featurize, merge, train-source, evaluate-source" in proc.stderr
    for stage in ("featurize", "merge", "train-source", "evaluate-source"):
        for record in slurm_cluster.job_records(jobs[stage]["job_id"]):
            assert record["JobState"] == "CANCELLED" and record["Reason"] == "DependencyNeverSatisfied", record
        assert not list((ws / "jobs" / "logs").glob(f"{stage}-*")), f"{stage} ran"
    assert not (ws / "features").exists()
    status = slurm_cluster.run([NEWSDL, "status", "-w", ws]).stdout
    assert re.search(r"ingest\s+failed\s+job \d+: FAILED \(exit 2\): log ", status), status
    assert re.search(r"merge\s+cancelled\s+job \d+: never ran: a stage it depends on failed", status), status


def test_usr1_requeues_a_featurize_shard_which_reuses_its_finished_chunks(slurm_cluster, chain, tmp_path):
    """VGG16 (slow on a CPU) over 30 images in chunks of 6: the signal comes after the first chunk."""
    import time

    src, proc = chain
    assert proc.returncode == 0, proc.stderr
    ws = tmp_path / "ws"
    shutil.copytree(src, ws, ignore=shutil.ignore_patterns("models", "jobs", "features"))
    cfg = hpc_config.parse({"newsdl": NEWSDL}, "test")
    spec = scripts.JobSpec(
        "featurize", "featurize",
        (NEWSDL, "featurize", "-w", str(ws), "--shard", scripts.Shell('"${index}/1"'), "--backbone", "vgg16",
         "--weights", "random", "--chunk-size", "6", "--batch-size", "3", "--max-images", "30"),
        hpc_config.Resources(time="00:20:00", cpus=1, mem="2G"), ws / "jobs" / "logs")
    spec.log_dir.mkdir(parents=True)
    script = ws / "jobs" / "featurize.sbatch"
    script.write_text(scripts.render(spec, cfg))
    job = slurm_cluster.sbatch(script)
    chunks = ws / "features" / "images" / ".chunks-0-of-1"
    deadline = time.monotonic() + 600
    while not (chunks.is_dir() and list(chunks.glob("chunk-*.parquet"))):
        assert time.monotonic() < deadline and slurm_cluster.job_state(job) in ("PENDING", "RUNNING")
        time.sleep(0.2)
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", job])
    records = slurm_cluster.wait_job(job, timeout=600)
    log = spec.log(job, 0).read_text()
    assert records[0]["JobState"] == "COMPLETED" and records[0]["Restarts"] == "1", log[-3000:]
    reused = int(re.search(r"chunks computed \d+, reused (\d+)", log)[1])
    assert reused >= 1, log[-3000:]
    assert pq.read_metadata(ws / "features" / "images" / "part-0-of-1.parquet").num_rows == 30
