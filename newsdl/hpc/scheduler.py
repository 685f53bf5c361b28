"""Talking to the scheduler: submit a script with its dependencies, and ask for a job's state.

SLURM: `sbatch --parsable`, and `scontrol show job -o` (it knows finished jobs for MinJobAge,
300 s by default; `sacct` would need the accounting database, which many clusters, and the test
cluster, do not have). PBS: `qsub` and `qstat -x -f -F json`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from newsdl.errors import UserError

# Our states, from the scheduler's.
_SLURM = {"PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
          "PREEMPTED": "pending", "SUSPENDED": "running", "RUNNING": "running", "CONFIGURING": "running",
          "COMPLETING": "running", "RESIZING": "running", "SIGNALING": "running", "STAGE_OUT": "running",
          "COMPLETED": "done", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "failed",
          "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed", "DEADLINE": "failed",
          "SPECIAL_EXIT": "failed", "REVOKED": "cancelled"}
_PBS = {"Q": "pending", "H": "pending", "W": "pending", "T": "pending", "S": "running", "R": "running",
        "E": "running", "B": "running", "X": "done", "F": "done"}


class SchedulerError(RuntimeError):
    pass


def available(scheduler: str) -> bool:
    return shutil.which("sbatch" if scheduler == "slurm" else "qsub") is not None


def submit(scheduler: str, script: str, depends: list[str]) -> str:
    """Submit one script after ``depends`` (job ids) end well; return its job id."""
    if scheduler == "slurm":
        argv = ["sbatch", "--parsable"] + ([f"--dependency=afterok:{':'.join(depends)}"] if depends else [])
    else:
        argv = ["qsub"] + (["-W", f"depend=afterok:{':'.join(depends)}"] if depends else [])
    tool = argv[0]
    if shutil.which(tool) is None:
        raise UserError(f"{tool}: not found on PATH; run `newsdl submit` on the cluster's login node "
                        f"(or --dry-run to only write the scripts)")
    proc = subprocess.run([*argv, script], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SchedulerError(f"{' '.join(argv)} {script}: exit {proc.returncode}: "
                             f"{(proc.stderr or proc.stdout).strip()}")
    out = proc.stdout.strip()
    # sbatch --parsable prints "ID" or "ID;CLUSTER"; qsub prints "ID.SERVER" (an array: "ID[].SERVER").
    return out.split(";")[0].strip() if scheduler == "slurm" else out.splitlines()[-1].strip()


def parse_record(line: str) -> dict:
    """One line of `scontrol show job -o`: KEY=VALUE fields (values may hold spaces)."""
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][\w:/]*)=", line))
    fields = {}
    for k, match in enumerate(keys):
        end = keys[k + 1].start() if k + 1 < len(keys) else len(line)
        fields[match[1]] = line[match.end():end].strip()
    return fields


def query(scheduler: str, job_id: str) -> list[dict] | None:
    """The tasks of a job: [{"index", "state", "raw_state", "exit", "reason", "restarts", "log"}];
    None when the scheduler cannot be asked or no longer knows the job."""
    try:
        if scheduler == "slurm":
            return _query_slurm(job_id)
        return _query_pbs(job_id)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _query_slurm(job_id: str) -> list[dict] | None:
    if shutil.which("scontrol") is None:
        return None
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return None
    tasks = []
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        r = parse_record(line)
        raw = r.get("JobState", "UNKNOWN")
        index = r.get("ArrayTaskId", "0")
        if not index.isdigit():  # the pending rest of an array, e.g. "1-3" or "2,4%1"
            for part in re.split(r"[,]", index.split("%")[0]):
                lo, _, hi = part.partition("-")
                for k in range(int(lo), int(hi or lo) + 1):
                    tasks.append(_task(k, raw, r))
            continue
        tasks.append(_task(int(index), raw, r))
    return sorted(tasks, key=lambda t: t["index"]) or None


def _task(index: int, raw: str, r: dict) -> dict:
    code, _, sig = r.get("ExitCode", "0:0").partition(":")
    return {"index": index, "state": _SLURM.get(raw, "unknown"), "raw_state": raw,
            "exit": int(code) if code.isdigit() else None, "signal": int(sig) if sig.isdigit() else None,
            "reason": r.get("Reason", "None"), "restarts": int(r.get("Restarts", "0") or 0),
            "job_id": r.get("JobId")}


def _query_pbs(job_id: str) -> list[dict] | None:
    if shutil.which("qstat") is None:
        return None
    proc = subprocess.run(["qstat", "-x", "-f", "-F", "json", "-t", job_id], capture_output=True, text=True,
                          timeout=30)
    if proc.returncode != 0:
        return None
    jobs = json.loads(proc.stdout).get("Jobs", {})
    tasks = []
    for jid, j in jobs.items():
        if "[]" in jid:  # the array's parent; its subjobs are listed too
            continue
        m = re.search(r"\[(\d+)\]", jid)
        raw = j.get("job_state", "?")
        code = j.get("Exit_status")
        state = _PBS.get(raw, "unknown")
        if state == "done" and code not in (None, 0):
            state = "failed"
        tasks.append({"index": int(m[1]) if m else 0, "state": state, "raw_state": raw, "exit": code,
                      "signal": None, "reason": j.get("comment", ""), "restarts": int(j.get("run_count", 1)) - 1,
                      "job_id": jid})
    return sorted(tasks, key=lambda t: t["index"]) or None
