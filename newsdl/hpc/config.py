"""The cluster config: one TOML file with the resources, modules and environment of every stage.

pipelines/cluster.example.toml is the commented example. Every key is optional; a stage's own
table (``[stage.featurize]``) overrides ``[resources]`` key by key.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from newsdl import defaults
from newsdl.errors import UserError
from newsdl.tasks import TASKS

SCHEDULERS = ("slurm", "pbs")
STAGES = ("ingest", "featurize", "merge", "train", "evaluate")
_TIME = re.compile(r"(\d+-)?\d{1,3}(:\d{2}){0,2}")
_MEM = re.compile(r"\d+[KMGT]?B?", re.IGNORECASE)
# Resource values that become one word of a #SBATCH/#PBS line. Those lines are not read by a
# shell, so nothing can be quoted there: sbatch splits them at whitespace and treats `"`, `\`
# and `#` itself, and a newline ends the directive, which turns the rest into shell commands.
WORD_KEYS = ("partition", "account", "qos", "gres", "constraint")
_UNSAFE_WORD = set(" '\"\\$`#%")


def unsafe_char(value: str, *, spaces: bool = False) -> str | None:
    """The first character of ``value`` that a directive line cannot carry, shown readably; None
    when there is none. ``spaces``: blanks are allowed (a verbatim directive with its own words)."""
    for ch in value:
        if ch == " " and spaces:
            continue
        if not ch.isprintable() or ch.isspace() or (ch in _UNSAFE_WORD and not spaces):
            return repr(ch)
    return None


@dataclass(frozen=True)
class Resources:
    """What one job asks the scheduler for. Empty strings and zeros are left out of the script."""

    partition: str = ""        # SLURM --partition; PBS -q (queue)
    account: str = ""          # SLURM --account; PBS -A
    qos: str = ""              # SLURM --qos; PBS: ignored
    time: str = defaults.JOB_TIME
    mem: str = defaults.JOB_MEM
    cpus: int = defaults.JOB_CPUS  # per task
    gres: str = ""             # SLURM --gres (e.g. gpu:1, gpu:a100:1); PBS: ngpus from its count
    constraint: str = ""       # SLURM --constraint; PBS: ignored
    nodes: int = 1
    ntasks: int = 1            # train: more than one runs `srun newsdl train --distributed slurm`
    extra: tuple[str, ...] = ()      # more #SBATCH directives, verbatim ("--exclusive")
    pbs_extra: tuple[str, ...] = ()  # more #PBS directives, verbatim ("-l place=scatter")
    args: tuple[str, ...] = ()   # more arguments to the stage's newsdl command


@dataclass(frozen=True)
class ClusterConfig:
    scheduler: str = defaults.SCHEDULER
    newsdl: str = "newsdl"     # the command the jobs run: on PATH after `setup`, or an absolute path
    modules: tuple[str, ...] = ()
    setup: str = ""            # shell lines run before the stage (activate a venv, ...)
    env: dict = field(default_factory=dict)
    max_requeues: int = defaults.MAX_REQUEUES
    signal_seconds: int = defaults.PREEMPT_SIGNAL_SECONDS
    shards: int = defaults.SHARDS
    tasks: tuple[str, ...] = TASKS
    resources: Resources = Resources()
    stages: dict = field(default_factory=dict)  # stage name -> Resources (already merged with `resources`)
    source: str = ""           # the file it was read from, for messages and script headers

    def stage(self, name: str) -> Resources:
        return self.stages.get(name, self.resources)


def load(path: Path | None) -> ClusterConfig:
    """Read and check a config file; None: the defaults (a laptop-sized job everywhere)."""
    if path is None:
        return ClusterConfig()
    path = Path(path)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UserError(f"--config {path}: reading TOML needs Python 3.11+ or `pip install tomli`") from None
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--config {path}: not valid TOML: {exc}") from None
    return parse(raw, str(path))


def parse(raw: dict, source: str = "<config>") -> ClusterConfig:
    def bad(key: str, why: str) -> UserError:
        return UserError(f"{source}: {key}: {why}")

    known = {f.name for f in fields(ClusterConfig)} - {"stages", "source"} | {"stage"}
    for key in raw:
        if key not in known:
            raise bad(key, f"unknown key (known: {', '.join(sorted(known))})")
    top = {}
    for key in ("scheduler", "newsdl", "setup"):
        if key in raw:
            top[key] = _str(raw[key], key, bad)
    if "newsdl" in top:
        try:
            shlex.split(top["newsdl"])
        except ValueError as exc:
            raise bad("newsdl", f"{top['newsdl']!r}: not a command line ({exc})") from None
    if top.get("scheduler", defaults.SCHEDULER) not in SCHEDULERS:
        raise bad("scheduler", f"{top['scheduler']!r}: choose {' or '.join(SCHEDULERS)}")
    for key in ("modules", "tasks"):
        if key in raw:
            top[key] = _strings(raw[key], key, bad)
    for key, low in (("max_requeues", 0), ("signal_seconds", 0), ("shards", 1)):
        if key in raw:
            top[key] = _int(raw[key], key, bad, low)
    if "tasks" in top:
        unknown = [t for t in top["tasks"] if t not in TASKS]
        if unknown:
            raise bad("tasks", f"unknown task {unknown[0]!r} (this version trains {', '.join(TASKS)})")
    if "env" in raw:
        if not isinstance(raw["env"], dict):
            raise bad("env", "must be a table of NAME = \"value\"")
        for name, value in raw["env"].items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise bad(f"env.{name}", "not a shell variable name")
            _str(value, f"env.{name}", bad)
        top["env"] = dict(raw["env"])
    base = _resources(Resources(), raw.get("resources", {}), "resources", bad)
    stage_tables = raw.get("stage", {})
    if not isinstance(stage_tables, dict):
        raise bad("stage", "must be tables such as [stage.featurize]")
    stages = {}
    for name in STAGES:
        stages[name] = _resources(base, stage_tables.get(name, {}), f"stage.{name}", bad)
    for name in stage_tables:
        if name not in STAGES:
            raise bad(f"stage.{name}", f"unknown stage (stages: {', '.join(STAGES)})")
    return ClusterConfig(**top, resources=base, stages=stages, source=source)


def _resources(base: Resources, table, where: str, bad) -> Resources:
    if not isinstance(table, dict):
        raise bad(where, "must be a table")
    known = {f.name for f in fields(Resources)}
    changes = {}
    for key, value in table.items():
        name = f"{where}.{key}"
        if key not in known:
            raise bad(name, f"unknown key (known: {', '.join(sorted(known))})")
        if key in ("cpus", "nodes", "ntasks"):
            changes[key] = _int(value, name, bad, 1)
        elif key in ("extra", "pbs_extra", "args"):
            changes[key] = _strings(value, name, bad)
        else:
            changes[key] = _str(value, name, bad)
        if key in WORD_KEYS:
            _directive_word(changes[key], name, bad)
        elif key in ("extra", "pbs_extra"):
            for line in changes[key]:
                char = unsafe_char(line, spaces=True)
                if char:
                    raise bad(name, f"{line!r}: {char} cannot go into a #SBATCH/#PBS line")
    if "time" in changes and changes["time"] and not _TIME.fullmatch(changes["time"]):
        raise bad(f"{where}.time", f"{changes['time']!r}: use [D-]HH:MM:SS, e.g. 02:00:00 or 1-00:00:00")
    if "mem" in changes and changes["mem"] and not _MEM.fullmatch(changes["mem"]):
        raise bad(f"{where}.mem", f"{changes['mem']!r}: use a size such as 16G or 4000M")
    return replace(base, **changes)


def _directive_word(value: str, name: str, bad) -> None:
    char = unsafe_char(value)
    if char:
        raise bad(name, f"{value!r}: {char} cannot go into a #SBATCH/#PBS line (one word: no blanks, "
                  f"quotes, \\, $, `, # or %)")


def _str(value, name, bad) -> str:
    if not isinstance(value, str):
        raise bad(name, f"must be a string, not {type(value).__name__}")
    return value


def _int(value, name, bad, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad(name, f"must be an integer >= {low}")
    return value


def _strings(value, name, bad) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad(name, "must be a list of strings")
    return tuple(value)
