"""Training throughput (examples/s) per task of two source trees, measured in the same run.

    python benchmarks/bench_train.py [--before DIR] [--after DIR] [--articles 600] [--epochs 4]
        [--tasks geoloc,source,popularity,caption,illustrate] [--repeats 1]
        [--out benchmarks/results/train.json]

Checks that a rewrite of the training loop is no slower than the code it replaces. Each run is
`train_task(ws, task, force=True, epochs=E, patience=E+10)` in a subprocess with PYTHONPATH set to
one tree (and that tree as its working directory, since `python -c` puts the working directory
ahead of PYTHONPATH); the patience keeps early stopping out of the way. Throughput is read from the
INFO line both trees log per epoch, `NAME epoch K/E: loss ..., MONITOR V (S s, R UNIT/s)`: the
median of R over epochs 2..E, since epoch 1 also traces the step functions (its time is recorded
on its own, as is the wall time of the whole subprocess, imports and data preparation included).
R is each tree's own figure, training examples over the epoch's time as that tree times it: if a
rewrite times more or less of the epoch (validation, checkpoint writes), the ratio shows that too,
and the wall time is the cross-check.
geoloc trains its two heads one after the other (--head auto); each is a row (geoloc/regress,
geoloc/cells).

The machine is a noisy shared 2-core box: absolute figures move by tens of percent from one run to
the next, so only the ratio after/before of runs made in the same invocation means anything. With
--before, the trees are interleaved task by task (before, after; after, before on the next repeat),
so that a slow spell hits both and neither side always runs first. Even so, a tree against itself
at 300 articles and 3 epochs (0.1-0.4 s epochs) gave ratios of 0.91 to 1.06 on a quiet machine and
0.73 to 1.66 beside a test run: decide on more articles and repeats. The sample workspace is built
once, by this repository's ingest and featurize (small_cnn, random weights); every (tree, task, repeat) run gets a fresh workspace holding a copy of
its ingest/ and features/, so neither tree ever sees the other's models. A failed run is recorded
(exit code, end of its output) and the others go on.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `geoloc/regress epoch 2/4 (worker 0 of 2): loss 812.3, val_km 901.2 (0.8 s, 523 articles/s)`
EPOCH_LINE = re.compile(r"(?P<name>[^\s:]+) epoch (?P<epoch>\d+)/\d+\b[^:\n]*:[^\n]*"
                        r"\((?P<seconds>[\d.eE+-]+|nan|inf) s, (?P<rate>[\d.eE+-]+|nan|inf) (?P<unit>\w+)/s\)")

CHILD = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO)
import newsdl
tree, ws, task, epochs = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if not Path(newsdl.__file__).resolve().is_relative_to(tree):
    sys.exit(f"newsdl imported from {newsdl.__file__}, not from {tree}")
from newsdl.tasks import train_task
train_task(ws, task, force=True, epochs=epochs, patience=epochs + 10)
"""


def make_workspace(n: int) -> Path:
    """A sample corpus of ``n`` articles, ingested and featurized with the demo's CPU settings."""
    from newsdl.features import run_featurize
    from newsdl.ingest.run import ingest
    from newsdl.sample.corpus import write_corpus

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_corpus(work / "corpus", n_articles=n, seed=1)
    ingest([work / "corpus" / "articles.jsonl"], work / "ws", images_root=work / "corpus")
    run_featurize(work / "ws", backbone="small_cnn", weights="random")
    return work / "ws"


def parse_epochs(output: str) -> dict[str, dict]:
    """Per model name, its epoch lines in order and its throughput. Only the first line of an
    epoch counts: the workers of a multi-worker run each log their own. A task with one head logs
    as "source/default", "caption/lstm-256" or "source", "caption", by tree: here it is "source",
    "caption"; only geoloc's two heads keep their names."""
    heads: dict[str, dict] = {}
    for m in EPOCH_LINE.finditer(output):
        task, _, head = m["name"].partition("/")
        name = m["name"] if task == "geoloc" else task
        head = heads.setdefault(name, {"unit": m["unit"], "epochs": []})
        if int(m["epoch"]) not in (e["epoch"] for e in head["epochs"]):
            head["epochs"].append({"epoch": int(m["epoch"]), "seconds": float(m["seconds"]),
                                   "rate": float(m["rate"])})
    for head in heads.values():
        later = [e["rate"] for e in head["epochs"] if e["epoch"] >= 2]
        first = [e["seconds"] for e in head["epochs"] if e["epoch"] == 1]
        head["examples_per_s"] = statistics.median(later) if later else None
        head["first_epoch_s"] = first[0] if first else None
    return heads


def train_once(tree: Path, sample: Path, run_ws: Path, task: str, epochs: int) -> dict:
    """One training run of ``tree``'s code in a fresh copy of the sample workspace."""
    for stage in ("ingest", "features"):
        shutil.copytree(sample / stage, run_ws / stage)
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(run_ws), task, str(epochs)],
                          cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          encoding="utf-8", errors="replace")
    run = {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
           "heads": parse_epochs(proc.stdout)}
    if proc.returncode != 0:
        run["output_tail"] = proc.stdout[-2000:]
    shutil.rmtree(run_ws, ignore_errors=True)
    return run


def commit(tree: Path) -> dict:
    """Where a tree stands; a dirty one is a rewrite under way, not its commit."""

    def git(*args):
        try:
            out = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain")
    return {"path": str(tree), "commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def summarize(runs: list[dict], sides: list[str]) -> list[dict]:
    """One row per model name: each side's median over repeats, and the ratio after/before. The
    wall time is the whole run's (both heads, for geoloc), of runs that succeeded."""
    rows: dict[str, dict] = {}
    for run in runs:
        for name, head in run["heads"].items():
            row = rows.setdefault(name, {"name": name, "task": run["task"], "unit": head["unit"]})
            figures = {**head, "wall_s": run["wall_s"] if run["returncode"] == 0 else None}
            for key in ("examples_per_s", "first_epoch_s", "wall_s"):
                if figures[key] is not None:
                    row.setdefault(f"{run['tree']}_{key}", []).append(figures[key])
    for row in rows.values():
        for side in sides:
            for key in ("examples_per_s", "first_epoch_s", "wall_s"):
                values = row.get(f"{side}_{key}")
                row[f"{side}_{key}"] = round(statistics.median(values), 2) if values else None
        before, after = row.get("before_examples_per_s"), row.get("after_examples_per_s")
        row["ratio"] = round(after / before, 3) if before and after else None
    return list(rows.values())


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the tree to compare against (default: none)")
    parser.add_argument("--after", type=Path, default=ROOT, help="the tree under test (default: this repository)")
    parser.add_argument("--articles", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--tasks", default="geoloc,source,popularity,caption,illustrate")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 is not measured")
    logging.basicConfig(level=logging.WARNING)

    from newsdl.workspace import versions, write_json

    trees = {"before": args.before.resolve()} if args.before else {}
    trees["after"] = args.after.resolve()
    for tree in trees.values():
        if not (tree / "newsdl").is_dir():
            parser.error(f"{tree}: no newsdl package there")
    tasks = args.tasks.split(",")
    sample = make_workspace(args.articles)
    runs = []
    try:
        for task in tasks:
            for repeat in range(args.repeats):
                order = list(trees.items())[::-1 if repeat % 2 else 1]  # no side always goes first
                for side, tree in order:
                    run = train_once(tree, sample, sample.parent / f"{side}-{task}-{repeat}", task, args.epochs)
                    runs.append({"tree": side, "task": task, "repeat": repeat, **run})
                    note = "" if run["returncode"] == 0 else f": FAILED (exit {run['returncode']}), output in the JSON"
                    print(f"{side} {task} #{repeat + 1}: {run['wall_s']:.0f} s{note}", file=sys.stderr)
    finally:
        shutil.rmtree(sample.parent, ignore_errors=True)

    summary = summarize(runs, list(trees))
    print(f"{'task/head':<20}{'unit':>9}{'before ex/s':>13}{'after ex/s':>12}{'after/before':>14}"
          f"{'epoch 1 s before':>18}{'after':>7}{'wall s before':>15}{'after':>7}")
    for row in summary:
        print(f"{row['name']:<20}{row['unit']:>9}{fmt(row.get('before_examples_per_s'), '.0f'):>13}"
              f"{fmt(row['after_examples_per_s'], '.0f'):>12}{fmt(row['ratio'], '.2f'):>14}"
              f"{fmt(row.get('before_first_epoch_s'), '.1f'):>18}{fmt(row['after_first_epoch_s'], '.1f'):>7}"
              f"{fmt(row.get('before_wall_s'), '.0f'):>15}{fmt(row['after_wall_s'], '.0f'):>7}")
    failed = [f"{r['tree']} {r['task']}" for r in runs if r["returncode"] != 0]
    if failed:
        print(f"failed runs (exit code and output in {args.out}): {', '.join(failed)}", file=sys.stderr)
    write_json(args.out, {"benchmark": "train", "cpu_count": os.cpu_count(),
                          "settings": {"articles": args.articles, "epochs": args.epochs, "tasks": tasks,
                                       "repeats": args.repeats, "patience": args.epochs + 10},
                          "trees": {side: commit(tree) for side, tree in trees.items()},
                          "summary": summary, "runs": runs, "versions": versions()})


if __name__ == "__main__":
    main()
