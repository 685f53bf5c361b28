"""`newsdl submit`: write the chain's job scripts into DIR/jobs/, submit them with after-ok
dependencies, record the jobs in DIR/jobs/jobs.json (for `newsdl status`), and optionally wait.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from newsdl.errors import UserError, where
from newsdl.hpc import config as hpc_config
from newsdl.hpc import scheduler as sched
from newsdl.hpc.scripts import log_id, render_chain
from newsdl.tasks import TASKS
from newsdl.workspace import atomic_path, now, write_json

JOBS_FILE = "jobs.json"


def jobs_dir(ws: Path) -> Path:
    return Path(ws) / "jobs"


def submit(ws: Path, inputs: list[Path], *, images_root: Path | None = None, scheduler: str | None = None,
           config: Path | None = None, shards: int | None = None, tasks: list[str] | None = None,
           mapping: list[str] | None = None, dry_run: bool = False) -> list[dict]:
    """Write and (unless ``dry_run``) submit the chain; return one record per job, in order.
    ``mapping``: ingest's ``--map NEW=OLD`` arguments, checked here as ingest checks them."""
    cfg = hpc_config.load(config)
    scheduler = scheduler or cfg.scheduler
    if scheduler not in hpc_config.SCHEDULERS:
        raise UserError(f"--scheduler {scheduler}: choose {' or '.join(hpc_config.SCHEDULERS)}")
    if shards is not None and shards < 1:
        raise UserError(f"--shards {shards}: must be at least 1")
    if tasks is not None:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise UserError(f"--tasks {','.join(tasks)}: choose among {', '.join(TASKS)}")
    if mapping:
        # A bad --map fails now, not in the ingest job after its wait in the queue. (pyarrow comes
        # with the import: only when there is a mapping to check.)
        from newsdl.ingest.run import parse_mapping

        parse_mapping(list(mapping))
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
                            tasks=tuple(tasks) if tasks is not None else None, mapping=tuple(mapping or ()))
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
                            "log": str(r.spec.log(log_id(job_id), 0 if r.spec.array == 1 else "%a")
                                       if job_id else r.spec.log()),
                            "array": r.spec.array, "depends": list(r.spec.depends)})
    except (sched.SchedulerError, UserError):
        _cancel(scheduler, list(ids.values()))  # half a chain would run stages whose successors never come
        raise
    if not dry_run:
        write_json(out / JOBS_FILE, {"scheduler": scheduler, "submitted": now(), "workspace": str(ws),
                                     "config": cfg.source or None, "jobs": records})
    return records


def _cancel(scheduler: str, job_ids: list[str]) -> None:
    if job_ids:
        tool = "scancel" if scheduler == "slurm" else "qdel"
        try:
            subprocess.run([tool, *job_ids], capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            pass


def read_jobs(ws: Path) -> dict | None:
    """DIR/jobs/jobs.json, checked, with the defaults of the fields a job may lack filled in; None
    when there is none. `newsdl submit` writes it whole (atomically), so a file that is not what it
    writes was edited or damaged: a UserError naming the file and the field, not a traceback."""
    path = jobs_dir(ws) / JOBS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); `newsdl submit` rewrites it, or delete it to forget "
                        f"the jobs") from None

    def bad(record_: str | None, field: str | None, why: str) -> UserError:
        return UserError(f"{where(str(path), record_, field)}: {why}; `newsdl submit` rewrites the file, or "
                         f"delete it to forget the jobs")

    if not isinstance(record, dict):
        raise bad(None, None, f"expected a JSON object with a 'jobs' list, found {type(record).__name__}")
    scheduler = record.get("scheduler", hpc_config.SCHEDULERS[0])
    if scheduler not in hpc_config.SCHEDULERS:
        raise bad(None, "scheduler", f"{scheduler!r} is not {' or '.join(hpc_config.SCHEDULERS)}")
    jobs = record.get("jobs", [])
    if not isinstance(jobs, list):
        raise bad(None, "jobs", f"expected a list, found {type(jobs).__name__}")
    checked = []
    for k, job in enumerate(jobs):
        entry = f"jobs[{k}]"
        if not isinstance(job, dict):
            raise bad(entry, None, f"expected an object, found {type(job).__name__}")
        stage = job.get("stage")
        if not isinstance(stage, str) or not stage:
            raise bad(entry, "stage", "missing" if stage is None else f"{stage!r} is not a stage name")
        job_id = job.get("job_id")
        if job_id is not None and (isinstance(job_id, bool) or not isinstance(job_id, (str, int))):
            raise bad(entry, "job_id", f"{job_id!r} is not a job id")
        array = job.get("array", 1)
        if isinstance(array, bool) or not isinstance(array, int) or array < 1:
            raise bad(entry, "array", f"{array!r} is not a task count")
        log = job.get("log", str(jobs_dir(ws) / "logs" / f"{stage}.out"))
        if not isinstance(log, str):
            raise bad(entry, "log", f"{log!r} is not a path")
        checked.append({**job, "stage": stage, "job_id": None if job_id is None else str(job_id), "array": array,
                        "log": log})
    return {**record, "scheduler": scheduler, "jobs": checked}
