"""The scheduler's side of `newsdl status`: the state of each submitted job, and which stage
failed with which log.

The jobs come from DIR/jobs/jobs.json (written by `newsdl submit`). The scheduler is asked first;
when it can no longer say (a finished job ages out of `scontrol` after MinJobAge, or the command
is not there), the workspace's manifests decide whether the stage's output is there.
"""

from __future__ import annotations

import time
from pathlib import Path

from newsdl import defaults
from newsdl.hpc import scheduler as sched
from newsdl.hpc.scripts import log_id as job_number
from newsdl.hpc.submit import read_jobs
from newsdl.workspace import read_manifest

FINAL = {"done", "failed", "cancelled", "unknown"}


def job_rows(ws: Path) -> list[dict]:
    """One row per submitted job: stage, job_id, state (done/running/pending/failed/cancelled/
    unknown), detail, logs (the log of each task that ran or is running), tasks."""
    record = read_jobs(ws)  # checked: every job has a stage, a job_id (maybe None), a log and an array
    if record is None:
        return []
    rows = []
    for job in record["jobs"]:
        tasks = sched.query(record["scheduler"], job["job_id"]) if job["job_id"] else None
        rows.append(_row(Path(ws), job, tasks))
    return rows


def _row(ws: Path, job: dict, tasks: list[dict] | None) -> dict:
    stage, job_id = job["stage"], job["job_id"]
    base = Path(job["log"]).parent
    number = job_number(job_id)

    def log_of(index: int) -> str:
        return str(base / f"{stage}-{number}_{index}.out")

    if tasks is None:
        done = _output_done(ws, stage, job["array"])
        state = "done" if done else "unknown"
        if job_id is None:
            detail = "output present" if done else "no job id recorded and its output is missing"
        else:
            detail = ("output present (the scheduler no longer lists the job)" if done else
                      "the scheduler no longer lists the job and its output is missing: see its log")
        logs = [p for p in (log_of(k) for k in range(job["array"])) if job_id and Path(p).is_file()]
        return {"stage": stage, "job_id": job_id, "state": state, "detail": detail, "logs": logs, "tasks": []}

    states = [t["state"] for t in tasks]
    failed = [t for t in tasks if t["state"] == "failed"]
    cancelled = [t for t in tasks if t["state"] == "cancelled"]
    restarts = max((t["restarts"] for t in tasks), default=0)
    requeued = f"; requeued {restarts}x" if restarts else ""
    if failed:
        t = failed[0]
        state = "failed"
        what = f"task {t['index']} " if len(tasks) > 1 else ""
        code = f"exit {t['exit']}" + (f", signal {t['signal']}" if t.get("signal") else "")
        detail = f"{what}{t['raw_state']} ({code}){requeued}: log {log_of(t['index'])}"
    elif cancelled:
        state = "cancelled"
        t = cancelled[0]
        if t["reason"] == "DependencyNeverSatisfied":
            detail = "never ran: a stage it depends on failed"
        else:
            detail = f"{t['raw_state']} ({t['reason']})"
    elif all(s == "done" for s in states):
        state, detail = "done", f"{len(tasks)} task(s) completed{requeued}"
    elif any(s == "running" for s in states) or any(s == "done" for s in states):
        state = "running"
        n_done = states.count("done")
        detail = f"{states.count('running')} running, {n_done} done, {states.count('pending')} pending{requeued}"
    else:
        state = "pending"
        reasons = sorted({t["reason"] for t in tasks if t["reason"] not in ("None", "")})
        detail = f"waiting ({', '.join(reasons) or 'queued'}){requeued}"
    logs = [log_of(t["index"]) for t in tasks if Path(log_of(t["index"])).is_file()]
    return {"stage": stage, "job_id": job_id, "state": state, "detail": detail, "logs": logs, "tasks": tasks}


def _output_done(ws: Path, stage: str, array: int) -> bool:
    if stage == "ingest":
        return read_manifest(ws / "ingest") is not None
    if stage == "featurize":
        images = ws / "features" / "images"
        return read_manifest(ws / "features") is not None or all(
            (images / f"part-{i}-of-{array}.parquet").is_file() for i in range(array))
    if stage == "merge":
        return read_manifest(ws / "features") is not None
    kind, _, task = stage.partition("-")
    if kind == "train":
        return read_manifest(ws / "models" / task) is not None
    if kind == "evaluate":  # evaluate's record is written last, after metrics.json and the plots
        return (ws / "models" / task / "evaluate.json").is_file()
    return False


def failure_report(rows: list[dict], tail: int = 5) -> list[str]:
    """For each failed job: a line naming the stage, job, state and log, then its log's last lines."""
    lines = []
    for row in rows:
        if row["state"] not in ("failed", "unknown"):
            continue
        lines.append(f"stage {row['stage']} failed (job {row['job_id']}, {row['detail']})")
        for log in row["logs"][:1]:
            try:
                last = Path(log).read_text(encoding="utf-8", errors="replace").splitlines()[-tail:]
            except OSError:
                last = []
            lines += [f"  | {line}" for line in last]
    never = [row["stage"] for row in rows if row["state"] == "cancelled"]
    if never:
        lines.append(f"never ran, cancelled by the scheduler: {', '.join(never)}")
    return lines


def wait(ws: Path, poll: float = defaults.WAIT_POLL_SECONDS, echo=print, timeout: float | None = None) -> list[dict]:
    """Poll until every submitted job has ended; echo each stage's state changes; return the rows."""
    seen: dict[str, str] = {}
    unknown = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        rows = job_rows(ws)
        for row in rows:
            if seen.get(row["stage"]) != row["state"]:
                seen[row["stage"]] = row["state"]
                echo(f"{row['stage']:<20} {row['state']:<9} {row['detail']}")
        # "unknown" can be a controller too busy to answer once: believe it three polls running.
        unknown = unknown + 1 if any(row["state"] == "unknown" for row in rows) else 0
        if all(row["state"] in FINAL for row in rows) and (unknown == 0 or unknown >= 3):
            return rows
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"jobs still running after {timeout:.0f} s")
        time.sleep(poll)
