"""Job scripts: the chain of stages as typed ``JobSpec`` values, and one render function per
scheduler that turns a spec into a batch script.

Every script has the same body: set up the environment, run the stage's `newsdl` command in the
background and ``wait`` for it, forward SIGUSR1/SIGTERM to it (it checkpoints and exits with
defaults.PREEMPTED_EXIT), and on SLURM requeue itself so that it resumes where it stopped, at
most ``max_requeues`` times. Only the header and a few variables differ between SLURM and PBS.

Quoting: every value from the command line goes into shell lines through ``shlex.quote``. The
#SBATCH/#PBS directive lines are read by sbatch/qsub, not by a shell, and cannot be quoted
reliably, so a workspace path or config value they cannot carry is refused (UserError) instead.
The config's ``setup`` lines and ``[env]`` values are shell code on purpose (they may use
$VARIABLES and commands), written as given.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from newsdl import defaults
from newsdl.errors import UserError
from newsdl.hpc.config import ClusterConfig, Resources, unsafe_char

SUFFIX = {"slurm": ".sbatch", "pbs": ".pbs"}
# SLURM expands %x (job name), %A (array job id) and %a (task index) in --output. Every stage is
# a job array (one task when it is not featurize), so every log follows this one pattern.
LOG_PATTERN = "%x-%A_%a.out"
# PBS job ids are "123.server", array jobs "123[].server" and their tasks "123[4].server": the log
# name keeps the number. Bash's pattern: strip the longest suffix from the first "." or "[". (The
# bracket expression must not start with "[": in "[[.]" bash 5.2 reads "[." as the start of a
# collating symbol and the pattern matches nothing.)
PBS_JOB_NUMBER = "${PBS_JOBID%%[.[]*}"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def log_id(job_id: str | None) -> str | None:
    """The job number the scripts put in log names: PBS's "123[].server" -> "123", as
    PBS_JOB_NUMBER does in the job."""
    if job_id is None:
        return None
    return str(job_id).split(".")[0].split("[")[0]


def check_directive_path(path: Path, option: str) -> None:
    """Refuse a path that the #SBATCH/#PBS lines (the log folder is under it) cannot carry. Besides
    what no directive word may hold, `%` and `\\` in --output are SLURM's filename patterns."""
    text = str(path)
    char = unsafe_char(text)
    if char:
        raise UserError(f"{option} {text!r}: the job scripts name their logs under it in #SBATCH/#PBS lines, "
                        f"which cannot quote {char}; use a path without blanks, quotes, \\, $, `, # or %")


class Shell(str):
    """A command word written into the script as is (it refers to a shell variable)."""


@dataclass(frozen=True)
class JobSpec:
    name: str                      # job name (%x) and script name: ingest, featurize, train-geoloc, ...
    stage: str                     # the config's stage table it takes its resources from
    command: tuple[str, ...]       # the newsdl command; Shell words are not quoted
    resources: Resources
    log_dir: Path
    array: int = 1                 # tasks in the job array (featurize: one per shard)
    depends: tuple[str, ...] = ()  # names of the jobs that must end well first (afterok)
    launcher: tuple[str, ...] = ()  # e.g. ("srun",) for a multi-task step

    def log(self, job_id: str | None = None, index: int | str = "%a") -> Path:
        """The log path; with no job id, SLURM's pattern."""
        if job_id is None:
            return self.log_dir / LOG_PATTERN.replace("%x", self.name)
        return self.log_dir / f"{self.name}-{job_id}_{index}.out"


def chain(cfg: ClusterConfig, ws: Path, inputs: list[Path], *, images_root: Path | None = None,
          shards: int | None = None, tasks: tuple[str, ...] | None = None,
          mapping: tuple[str, ...] = ()) -> list[JobSpec]:
    """The whole pipeline: ingest -> featurize (array of shards) -> merge -> train and evaluate
    each task, in submission order (every job after the jobs it depends on). ``mapping``: ingest's
    ``--map NEW=OLD`` arguments, each one shell word of the ingest line."""
    shards = cfg.shards if shards is None else shards
    tasks = cfg.tasks if tasks is None else tasks
    check_directive_path(ws, "--workspace")
    logs = ws / "jobs" / "logs"
    newsdl = tuple(shlex.split(cfg.newsdl)) or ("newsdl",)
    feat_args = cfg.stage("featurize").args
    ingest_cmd = (*newsdl, "ingest", *map(str, inputs), "-w", str(ws),
                  *(("--images-root", str(images_root)) if images_root else ()),
                  *(word for pair in mapping for word in ("--map", pair)), *cfg.stage("ingest").args)
    jobs = [
        JobSpec("ingest", "ingest", ingest_cmd, cfg.stage("ingest"), logs),
        JobSpec("featurize", "featurize",
                (*newsdl, "featurize", "-w", str(ws), "--shard", Shell(f'"${{index}}/{shards}"'), *feat_args),
                cfg.stage("featurize"), logs, array=shards, depends=("ingest",)),
        JobSpec("merge", "merge", (*newsdl, "featurize", "-w", str(ws), "--merge", *feat_args,
                                   *cfg.stage("merge").args), cfg.stage("merge"), logs, depends=("featurize",)),
    ]
    train = cfg.stage("train")
    multi = train.ntasks > 1 or train.nodes > 1
    for task in tasks:
        jobs.append(JobSpec(f"train-{task}", "train",
                            (*newsdl, "train", task, "-w", str(ws), *train.args,
                             *(("--distributed", "slurm") if multi else ())),
                            train, logs, depends=("merge",), launcher=("srun",) if multi else ()))
        jobs.append(JobSpec(f"evaluate-{task}", "evaluate",
                            (*newsdl, "evaluate", task, "-w", str(ws), *cfg.stage("evaluate").args),
                            cfg.stage("evaluate"), logs, depends=(f"train-{task}",)))
    return jobs


def render(spec: JobSpec, cfg: ClusterConfig, scheduler: str | None = None) -> str:
    scheduler = scheduler or cfg.scheduler
    # The name is a directive word and is written unquoted in the body; it comes from the stage
    # and task names, never from the user.
    if not _NAME.fullmatch(spec.name):
        raise ValueError(f"job name {spec.name!r}: letters, digits, '.', '_' and '-' only")
    check_directive_path(spec.log_dir, "log folder")
    header = _slurm_header(spec, cfg) if scheduler == "slurm" else _pbs_header(spec)
    return header + _body(spec, cfg, scheduler)


def _slurm_header(spec: JobSpec, cfg: ClusterConfig) -> str:
    r = spec.resources
    lines = [f"--job-name={spec.name}", f"--output={spec.log_dir / LOG_PATTERN}", "--open-mode=append",
             f"--array=0-{spec.array - 1}"]
    lines += [f"--{key}={value}" for key, value in (
        ("partition", r.partition), ("account", r.account), ("qos", r.qos), ("time", r.time),
        ("nodes", r.nodes if r.nodes > 1 else ""), ("ntasks", r.ntasks if r.ntasks > 1 else ""),
        ("cpus-per-task", r.cpus), ("mem", r.mem), ("gres", r.gres), ("constraint", r.constraint)) if value]
    if cfg.signal_seconds:
        # B: signals the batch shell only, which forwards it to the one process that checkpoints.
        lines.append(f"--signal=B:USR1@{cfg.signal_seconds}")
    lines += ["--requeue", "--kill-on-invalid-dep=yes", *r.extra]
    return "#!/bin/bash\n" + "".join(f"#SBATCH {line}\n" for line in lines)


def _pbs_header(spec: JobSpec) -> str:
    r = spec.resources
    select = f"select={r.nodes}:ncpus={r.cpus}" + (f":mpiprocs={r.ntasks // r.nodes or 1}" if r.ntasks > 1 else "")
    if r.mem:
        select += f":mem={_pbs_size(r.mem)}"
    gpus = _gpu_count(r.gres)
    if gpus:
        select += f":ngpus={gpus}"
    lines = [f"-N {spec.name}"]
    if spec.array > 1:
        lines.append(f"-J 0-{spec.array - 1}")
    lines += [f"-l {select}", f"-l walltime={r.time}" if r.time else ""]
    lines += [f"-q {r.partition}" if r.partition else "", f"-A {r.account}" if r.account else ""]
    # PBS cannot name logs per array index in append mode, so it gets its own spool file in the
    # log folder and the script appends to our log with `exec`.
    lines += ["-j oe", f"-o {spec.log_dir}/", "-r y", *r.pbs_extra]
    return "#!/bin/bash\n" + "".join(f"#PBS {line}\n" for line in lines if line)


def _pbs_size(mem: str) -> str:
    mem = mem.upper().rstrip("B")
    return (mem[:-1] + mem[-1].lower() + "b") if mem[-1:].isalpha() else mem + "b"


def _gpu_count(gres: str) -> int:
    for item in filter(None, gres.split(",")):
        parts = item.split(":")
        if parts[0] == "gpu":
            return int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return 0


def _quote(word: str) -> str:
    return str(word) if isinstance(word, Shell) else shlex.quote(str(word))


def _body(spec: JobSpec, cfg: ClusterConfig, scheduler: str) -> str:
    slurm = scheduler == "slurm"
    what = f"shard ${{index}} of {spec.array}" if spec.array > 1 else "one task"
    # A newline in the config's file name would end the comment and start a command.
    source = "".join(c if c.isprintable() else "?" for c in cfg.source or "the default config")
    out = [f"# newsdl stage {spec.name} ({what}), from {source}.",
           "# Written by `newsdl submit`; change the config and rerun it (--dry-run) rather than editing this file.",
           "set -uo pipefail", ""]
    if not slurm:
        out += ['index=${PBS_ARRAY_INDEX:-0}',
                f'job="{PBS_JOB_NUMBER}_${{index}}"',
                f'exec >>{shlex.quote(str(spec.log_dir))}/"${{PBS_JOBNAME}}-${{job}}.out" 2>&1',
                # PBS keeps no restart count in the environment; it reruns (-r y) a preempted job.
                "restarts=0"]
    else:
        out += ['index=${SLURM_ARRAY_TASK_ID:-0}',
                'job="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID}}_${index}"',
                "restarts=${SLURM_RESTART_COUNT:-0}"]
    out += [f"max_requeues={cfg.max_requeues}",
            'note() { echo "[newsdl-job $(date +%Y-%m-%dT%H:%M:%S)] $*"; }',
            f'note "{spec.name}: job $job on $(hostname), run $((restarts + 1)) (requeues so far: $restarts of '
            f'at most $max_requeues)"', ""]
    if cfg.modules:
        out += [f"module load {shlex.quote(m)} || exit 1" for m in cfg.modules]
    if cfg.setup.strip():
        out += [cfg.setup.rstrip("\n")]
    out += [f'export {name}="{value}"' for name, value in cfg.env.items()]
    out += ["export PYTHONUNBUFFERED=1", ""]
    command = " ".join(_quote(w) for w in (*spec.launcher, *spec.command))
    out += [
        "# A preemption or time-limit warning goes to the stage, which keeps its checkpoint (training: the",
        "# last finished epoch; featurize: the finished chunks) and exits; then the job requeues itself.",
        'stop=""',
        'child=""',
        'forward() { stop=$1; note "got SIG$1: asking newsdl to checkpoint and stop"; '
        '[ -n "$child" ] && kill -"$1" "$child" 2>/dev/null; }',
        "trap 'forward USR1' USR1",
        "trap 'forward TERM' TERM",
        "",
        f"{command} &",
        "child=$!",
        '[ -n "$stop" ] && kill -"$stop" "$child" 2>/dev/null',
        "# `wait` returns early when a trapped signal arrives; wait again until the stage has exited.",
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; done',
        'wait "$child"; status=$?',
        "",
    ]
    if slurm:
        # Only the early warning requeues: a SIGTERM is scancel or the time limit itself, after
        # which the job must end (a preemption in requeue mode is requeued by SLURM itself).
        out += [f'if [ "$stop" = USR1 ] && [ "$status" -ne 0 ]; then  # the stage exits {defaults.PREEMPTED_EXIT} '
                f'after its checkpoint']
    else:
        out += ['if [ -n "$stop" ] && [ "$status" -ne 0 ]; then']
    if slurm:
        out += [
            '  if [ "$restarts" -lt "$max_requeues" ]; then',
            '    note "stopped (exit $status): requeueing $job, which resumes from its checkpoint"',
            '    scontrol requeue "$job" && exit "$status"',
            '    note "scontrol requeue $job failed"',
            "  else",
            '    note "stopped (exit $status) and already requeued $restarts times, the cap: giving up"',
            "  fi",
        ]
    else:
        out += ['  note "stopped (exit $status) after its checkpoint; PBS reruns it (-r y) if it was preempted, '
                'or rerun newsdl submit: every stage resumes"']
    out += ["fi", 'note "exit $status"', 'exit "$status"', ""]
    return "\n".join(out)


@dataclass
class Rendered:
    spec: JobSpec
    path: Path
    text: str = field(repr=False)


def render_chain(cfg: ClusterConfig, ws: Path, inputs: list[Path], out_dir: Path, *,
                 scheduler: str | None = None, **kwargs) -> list[Rendered]:
    scheduler = scheduler or cfg.scheduler
    return [Rendered(spec, Path(out_dir) / (spec.name + SUFFIX[scheduler]), render(spec, cfg, scheduler))
            for spec in chain(cfg, Path(ws), [Path(p) for p in inputs], **kwargs)]
