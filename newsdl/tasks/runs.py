"""Training runs, compared: `newsdl metrics show` (every task's current run against its best
baseline) and `newsdl metrics diff A B` (two runs, metric by metric and setting by setting, as
`dvc metrics diff` and `dvc params diff` do). Reads only; the layout is layout.py's.

A run is named by ``TASK/RUN`` (RUN: its id, 20261201-233100), by a run id alone (searched across
the tasks), by ``TASK`` (its current run), by ``TASK~N`` (the Nth run before the current one), or
by the path of a run folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from newsdl.errors import UserError
from newsdl.status import metrics_state
from newsdl.tasks import REGISTRY, get
from newsdl.tasks import layout
from newsdl.workspace import read_json, read_manifest

# config.json keys that are outcomes or fitted objects, not settings: params diff leaves them out.
NOT_PARAMS = ("run", "fitted", "heads", "summary", "task")


@dataclass
class RunRef:
    """One training run's files: ``folder`` is runs/RUN/, or models/TASK/ for a model trained
    before runs had folders (``run`` None then)."""

    task: str
    run: str | None
    folder: Path
    current: bool

    @property
    def label(self) -> str:
        return f"{self.task}/{self.run or '(current)'}"


@dataclass
class TaskRow:
    """`metrics show`'s line for one task."""

    task: str
    run: str | None
    metric: str
    higher_is_better: bool
    value: float | None = None
    baseline: str | None = None
    baseline_value: float | None = None
    diff: float | None = None  # model - best baseline, on the main metric
    ci95: list | None = None  # its paired-bootstrap 95% interval, when evaluate computed it
    flag: str = ""  # why the numbers are missing or are not the current model's


@dataclass
class Change:
    key: str
    old: object
    new: object
    change: float | None = None


@dataclass
class RunDiff:
    a: RunRef
    b: RunRef
    metrics: list[Change] = field(default_factory=list)
    params: list[Change] = field(default_factory=list)


# ------------------------------------------------------------------ metrics show

def task_folders(ws: Path) -> list[Path]:
    root = Path(ws) / "models"
    return [p for p in sorted(root.iterdir()) if p.is_dir() and p.name in REGISTRY] if root.is_dir() else []


def show(ws: Path) -> list[TaskRow]:
    """One row per task folder of the workspace: its current run's main metric against the best
    baseline on it, and a flag when the metrics are missing or of another model."""
    rows = []
    for folder in task_folders(ws):
        t = get(folder.name)
        row = TaskRow(folder.name, layout.current_run(folder), t.main_metric, bool(t.higher_is_better))
        manifest = read_manifest(folder)
        metrics = read_json(folder / layout.METRICS)
        if manifest is None:
            row.flag = "not trained (or training now / killed): run `newsdl train " + folder.name + "`"
        else:
            state, note = metrics_state(folder, manifest)
            if state != "done" or not isinstance(metrics, dict):
                row.flag = note.lstrip("; ") or state
        if isinstance(metrics, dict):
            fill_main(row, metrics)
        rows.append(row)
    return rows


def fill_main(row: TaskRow, metrics: dict) -> None:
    """The model's main metric, the best baseline on it, and their paired difference."""
    main = metrics.get("main_metric") or row.metric
    row.metric = main
    row.value = number(metrics.get("test", {}).get(main))
    scored = {name: number(s.get(main)) for name, s in (metrics.get("baselines") or {}).items()
              if isinstance(s, dict)}
    scored = {name: v for name, v in scored.items() if v is not None}
    if not scored:
        return
    pick = max if row.higher_is_better else min
    row.baseline = pick(scored, key=scored.get)
    row.baseline_value = scored[row.baseline]
    vs = ((metrics.get("vs_baselines") or {}).get(row.baseline) or {}).get(main)
    if isinstance(vs, dict):
        row.diff, row.ci95 = number(vs.get("diff")), vs.get("ci95")
    elif row.value is not None:
        row.diff = row.value - row.baseline_value


def show_json(ws: Path, rows: list[TaskRow]) -> str:
    return json.dumps({"workspace": str(ws), "tasks": [asdict(r) for r in rows]})


SHOW_COLUMNS = ("task", "run", "metric (better)", "model", "best baseline", "baseline", "model - baseline (95% CI)",
                "flag")


def show_cells(row: TaskRow) -> list[str]:
    """A row's cells, as text, in SHOW_COLUMNS' order."""
    better = "higher" if row.higher_is_better else "lower"
    ci = f" ({fmt(row.ci95[0], True)} to {fmt(row.ci95[1], True)})" if row.ci95 else ""
    return [row.task, row.run or "-", f"{row.metric} ({better})", fmt(row.value), row.baseline or "-",
            fmt(row.baseline_value), (fmt(row.diff, True) + ci) if row.diff is not None else "-", row.flag]


# ------------------------------------------------------------------ naming runs

def resolve(ws: Path, name: str) -> RunRef:
    """The run that ``name`` names (module docstring); UserError when none or several do."""
    ws = Path(ws)
    path = Path(name).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in (layout.RUN_RECORD, layout.CONFIG, layout.METRICS)):
        return ref_of_folder(path.resolve())
    models = ws / "models"
    task, _, run = name.partition("/")
    task, _, back = task.partition("~")
    if task in REGISTRY and (models / task).is_dir():
        folder = models / task
        if run:
            if not layout.run_folder(folder, run).is_dir():
                raise UserError(f"{name}: no run {run} of {task} in {folder / layout.RUNS} "
                                f"({known(folder)})")
            return RunRef(task, run, layout.run_folder(folder, run), run == layout.current_run(folder))
        return ref_back(folder, back, name) if back else current_ref(folder)
    if layout.RUN_ID.match(name):
        found = [p for p in task_folders(ws) if layout.run_folder(p, name).is_dir()]
        if len(found) > 1:
            raise UserError(f"{name}: a run of several tasks ({', '.join(p.name for p in found)}); "
                            f"write TASK/{name}")
        if found:
            return RunRef(found[0].name, name, layout.run_folder(found[0], name),
                          name == layout.current_run(found[0]))
    trained = ", ".join(p.name for p in task_folders(ws)) or "none"
    raise UserError(f"{name}: no such run in {models} (write TASK, TASK~N, TASK/RUN, a run id or a run "
                    f"folder; trained tasks: {trained})")


def current_ref(folder: Path) -> RunRef:
    run = layout.current_run(folder)
    if run and (layout.run_folder(folder, run) / layout.CONFIG).is_file():
        return RunRef(folder.name, run, layout.run_folder(folder, run), True)
    if not (folder / layout.CONFIG).is_file():
        raise UserError(f"{folder.name}: no trained model in {folder}; run `newsdl train {folder.name}`")
    return RunRef(folder.name, run, folder, True)


def ref_back(folder: Path, back: str, name: str) -> RunRef:
    """TASK~N: the Nth run before the current one (the newest, when none is current)."""
    if not back.isdigit():
        raise UserError(f"{name}: ~ takes a number of runs back, as in {folder.name}~1")
    ids = layout.run_ids(folder)
    current = layout.current_run(folder)
    at = ids.index(current) if current in ids else len(ids) - 1
    if at - int(back) < 0:
        raise UserError(f"{name}: {folder.name} has {at + 1} run(s) up to its current one ({known(folder)})")
    run = ids[at - int(back)]
    return RunRef(folder.name, run, layout.run_folder(folder, run), run == current)


def ref_of_folder(path: Path) -> RunRef:
    record = read_json(path / layout.RUN_RECORD) or {}
    config = read_json(path / layout.CONFIG) or {}
    metrics = read_json(path / layout.METRICS) or {}
    task = config.get("task") or metrics.get("task") or (record.get("identity") or {}).get("config", {}).get("task")
    if task not in REGISTRY:
        raise UserError(f"{path}: not a run folder of a newsdl task (no task named in its config.json)")
    run = path.name if layout.RUN_ID.match(path.name) else config.get("run")
    models = path.parent.parent if path.parent.name == layout.RUNS else path
    return RunRef(task, run, path, run is not None and run == layout.current_run(models))


def known(folder: Path) -> str:
    ids = layout.run_ids(folder)
    return "runs: " + (", ".join(ids[-5:]) + (f" and {len(ids) - 5} older" if len(ids) > 5 else "") if ids
                       else "none")


# ------------------------------------------------------------------ metrics diff

def diff(ws: Path, name_a: str, name_b: str) -> RunDiff:
    """Runs ``name_a`` (old) and ``name_b`` (new), compared on every metric and setting."""
    a, b = resolve(ws, name_a), resolve(ws, name_b)
    ma, mb = run_metrics(a), run_metrics(b)
    if not ma and not mb:
        raise UserError(f"{a.label} and {b.label}: neither run has metrics.json nor a training summary; "
                        f"run `newsdl evaluate TASK`")
    result = RunDiff(a, b)
    for key in merged_keys(ma, mb):
        old, new = ma.get(key), mb.get(key)
        change = new - old if isinstance(old, (int, float)) and isinstance(new, (int, float)) else None
        result.metrics.append(Change(key, old, new, change))
    pa, pb = run_params(a), run_params(b)
    for key in merged_keys(pa, pb):
        if pa.get(key) != pb.get(key):
            result.params.append(Change(key, pa.get(key), pb.get(key)))
    return result


def run_metrics(ref: RunRef) -> dict:
    """A run's numbers, flat: model.KEY and BASELINE.KEY (test), n_train/n_test, and val.MONITOR
    (the best val value, from training's summary)."""
    out = {}
    metrics = read_json(ref.folder / layout.METRICS)
    if isinstance(metrics, dict):
        for name, scores in {"model": metrics.get("test") or {}, **(metrics.get("baselines") or {})}.items():
            flatten(out, name, scores)
        for key in ("n_train", "n_test"):
            if isinstance(metrics.get(key), (int, float)):
                out[key] = metrics[key]
    summary = (read_json(ref.folder / layout.CONFIG) or {}).get("summary") or {}
    if summary.get("monitor") and isinstance(summary.get("val_best"), (int, float)):
        out[f"val.{summary['monitor']}"] = summary["val_best"]
    return out


def flatten(out: dict, prefix: str, value) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(out, f"{prefix}.{k}", v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value


def run_params(ref: RunRef) -> dict:
    """A run's settings (config.json less what was fitted or measured), and the chosen head."""
    config = read_json(ref.folder / layout.CONFIG) or {}
    return {k: v for k, v in config.items() if k not in NOT_PARAMS}


def merged_keys(a: dict, b: dict) -> list[str]:
    return list(a) + [k for k in b if k not in a]


def diff_json(d: RunDiff) -> str:
    return json.dumps({"old": {**asdict(d.a), "folder": str(d.a.folder)},
                       "new": {**asdict(d.b), "folder": str(d.b.folder)},
                       "metrics": [asdict(c) for c in d.metrics], "params": [asdict(c) for c in d.params]},
                      default=str)


def diff_tables(d: RunDiff) -> tuple[list[list[str]], list[list[str]]]:
    """The metric rows (metric, old, new, change) and the param rows (param, old, new), as text."""
    metrics = [[c.key, fmt(c.old), fmt(c.new), fmt(c.change, True) if c.change is not None else "-"]
               for c in d.metrics]
    params = [[c.key, param_text(c.old), param_text(c.new)] for c in d.params]
    return metrics, params


def param_text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


# ------------------------------------------------------------------ text

def number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fmt(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not signed:
        return str(value)
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def plain_table(header: list[str] | tuple, rows: list[list[str]]) -> str:
    """Columns aligned with spaces (numbers right-aligned), for logs, pipes and files."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    right = numeric_columns(header, rows)

    def line(cells):
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def numeric_columns(header, rows) -> list[bool]:
    """Which columns hold only numbers (or '-'): those are right-aligned."""
    return [bool(rows) and all(is_number(r[i]) or r[i] == "-" for r in rows) for i in range(len(header))]


def is_number(text) -> bool:
    try:
        float(str(text).split(" ")[0])
        return True
    except ValueError:
        return False
