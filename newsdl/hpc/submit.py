"""`newsdl submit`: write the chain's job scripts into DIR/jobs/, submit them with after-ok
dependencies, record the jobs in DIR/jobs/jobs.json (for `newsdl status`), and optionally wait.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from newsdl import defaults, workspace
from newsdl.errors import UserError
from newsdl.hpc import config as hpc_config
from newsdl.hpc import scheduler as sched
from newsdl.hpc.scripts import render_chain
from newsdl.workspace import atomic_path, now, write_json

JOBS_FILE = "jobs.json"


def jobs_dir(ws: Path) -> Path:
    return Path(ws) / "jobs"


def submit(ws: Path, inputs: list[Path], *, images_root: Path | None = None, scheduler: str | None = None,
           config: Path | None = None, shards: int | None = None, tasks: list[str] | None = None,
           dry_run: bool = False) -> list[dict]:
    """Write and (unless ``dry_run``) submit the chain; return one record per job, in order."""
    cfg = hpc_config.load(config)
    scheduler = scheduler or cfg.scheduler
    if scheduler not in hpc_config.SCHEDULERS:
        raise UserError(f"--scheduler {scheduler}: choose {' or '.join(hpc_config.SCHEDULERS)}")
    if shards is not None and shards < 1:
        raise UserError(f"--shards {shards}: must be at least 1")
    if tasks is not None:
        unknown = [t for t in tasks if t not in defaults.TASKS]
        if unknown or not tasks:
            raise UserError(f"--tasks {','.join(tasks)}: choose among {', '.join(defaults.TASKS)}")
    # Jobs start elsewhere, in another folder: every path they see must be absolute.
    inputs = [Path(p).expanduser().resolve() for p in inputs]
    for path in inputs:
        if not path.exists():
            raise UserError(f"{path}: input not found")
    if images_root is not None:
        images_root = Path(images_root).expanduser().resolve()
        if not images_root.is_dir():
            raise UserError(f"--images-root {images_root}: not a folder")
    ws = Path(ws)
    out = jobs_dir(ws)
    rendered = render_chain(cfg, ws, inputs, out, scheduler=scheduler, images_root=images_root, shards=shards,
                            tasks=tuple(tasks) if tasks is not None else None)
    (out / "logs").mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder
    for r in rendered:
        with atomic_path(r.path) as tmp:
            tmp.write_text(r.text, encoding="utf-8")
            os.chmod(tmp, 0o755)

    records, ids = [], {}
    try:
        for r in rendered:
            job_id = None
            if not dry_run:
                job_id = sched.submit(scheduler, str(r.path), [ids[d] for d in r.spec.depends])
                ids[r.spec.name] = job_id
            records.append({"stage": r.spec.name, "job_id": job_id, "script": str(r.path),
                            "log": str(r.spec.log(_log_id(job_id), 0 if r.spec.array == 1 else "%a")
                                       if job_id else r.spec.log()),
                            "array": r.spec.array, "depends": list(r.spec.depends)})
    except (sched.SchedulerError, UserError):
        _cancel(scheduler, list(ids.values()))  # half a chain would run stages whose successors never come
        raise
    if not dry_run:
        write_json(out / JOBS_FILE, {"scheduler": scheduler, "submitted": now(), "workspace": str(ws),
                                     "config": cfg.source or None, "jobs": records})
    return records


def _log_id(job_id: str | None) -> str | None:
    """The job number the scripts put in log names: PBS's "123[].server" -> "123"."""
    if job_id is None:
        return None
    return job_id.split(".")[0].split("[")[0]


def _cancel(scheduler: str, job_ids: list[str]) -> None:
    if job_ids:
        tool = "scancel" if scheduler == "slurm" else "qdel"
        try:
            subprocess.run([tool, *job_ids], capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            pass


def read_jobs(ws: Path) -> dict | None:
    return workspace.read_json(jobs_dir(ws) / JOBS_FILE)


def wait(ws: Path, poll: float = defaults.WAIT_POLL_SECONDS, echo=print, timeout: float | None = None) -> list[dict]:
    """Poll until every submitted job has ended; echo each stage's state changes; return the rows."""
    from newsdl.hpc.status import FINAL, job_rows

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

