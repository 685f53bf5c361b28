"""Model quality on whole corpora, as a user gets it: the model against every baseline, every metric.

    python benchmarks/bench_quality.py CORPUS:TASK [CORPUS:TASK ...] [--work DIR]
        [--out benchmarks/results/quality.json]

CORPUS is an input file that `newsdl ingest` reads (.jsonl, .jsonl.gz, .json, .csv, .parquet), or
`sample[:N]`: the embedded sample corpus of N articles (default 2,000, the demo's). For each corpus
the pipeline runs once, through the CLI and with the defaults, as a new user would run it:
`newsdl ingest`, `newsdl featurize` (text only when the corpus has no image; the demo's small CNN
otherwise, since nothing here may fetch ImageNet weights), then `newsdl train TASK` and
`newsdl evaluate TASK` for each of its tasks. The baselines are evaluate's own, measured in the
same run on the same test split, so each row is a paired comparison.

It prints one table (a row per system: the model, then each baseline; a column per metric, the
main one marked '*'; then the model's paired difference from each baseline on the main metric,
with evaluate's 95% bootstrap interval) and writes one JSON with every metrics.json and each
stage's time. The real
corpora of ../shared/corpora are arguments only: nothing of them is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def newsdl(*args) -> float:
    """Run `newsdl ARGS` (exit on failure, with its last lines); return its seconds."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "newsdl", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        sys.exit(f"newsdl {' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return round(time.monotonic() - t0, 1)


def prepare(corpus: str, ws: Path) -> dict:
    """Ingest and featurize ``corpus`` into ``ws``; {name, seconds per stage, images}."""
    from newsdl.workspace import read_manifest

    seconds = {}
    if corpus.split(":")[0] == "sample":
        n = int(corpus.split(":")[1]) if ":" in corpus else 2000
        seconds["sample-corpus"] = newsdl("sample-corpus", ws.parent / "corpus", "--articles", n)
        source, name = ws.parent / "corpus" / "articles.jsonl", f"sample ({n} articles)"
    else:
        source, name = Path(corpus).expanduser().resolve(), Path(corpus).name.split(".")[0]
    seconds["ingest"] = newsdl("ingest", source, "-w", ws, "--images-root", source.parent)
    images = int(read_manifest(ws / "ingest")["counts"].get("images_accepted", 0))
    image_args = ["--backbone", "small_cnn", "--weights", "random"] if images else ["--no-images"]
    seconds["featurize"] = newsdl("featurize", "-w", ws, *image_args)
    return {"corpus": name, "seconds": seconds, "images": images}


def table(results: list[dict]) -> str:
    from newsdl.tasks import get

    lines = []
    for r in results:
        m, t = r["metrics"], get(r["task"])
        keys = list(t.metric_keys)
        lines.append(f"\n{r['corpus']} — {r['task']}: {m['n_test']} test, {m['n_train']} train "
                     f"(train {r['seconds']['train']} s, evaluate {r['seconds']['evaluate']} s)")
        systems = {"model": m["test"], **m["baselines"]}
        width = max(map(len, systems)) + 2
        lines.append(" " * width + "".join(f"{k + ('*' if k == t.main_metric else ''):>15}" for k in keys))
        lines += [f"{name:<{width}}" + "".join(f"{s[k]:>15.4g}" for k in keys) for name, s in systems.items()]
        for name, vs in m.get("vs_baselines", {}).items():
            d = vs[t.main_metric]
            lines.append(f"model - {name}: {d['diff']:+.4g} (95% interval {d['ci95'][0]:+.4g} to {d['ci95'][1]:+.4g})")
        verdict = "beats" if m["beats_every_baseline"] else "does NOT beat"
        lines.append(f"the model {verdict} every baseline on {t.main_metric}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="CORPUS:TASK")
    parser.add_argument("--work", type=Path, help="where the workspaces go [default: a temporary folder]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    args = parser.parse_args()
    from newsdl.tasks import TASKS
    from newsdl.workspace import versions, write_json

    by_corpus: dict[str, list[str]] = {}
    for run in args.runs:
        corpus, _, task = run.rpartition(":")
        if task not in TASKS or not corpus:
            parser.error(f"{run}: expected CORPUS:TASK with TASK one of {', '.join(TASKS)}")
        by_corpus.setdefault(corpus, []).append(task)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    results = []
    for i, (corpus, tasks) in enumerate(by_corpus.items()):
        ws = work / f"corpus{i}" / "ws"
        prepared = prepare(corpus, ws)
        for task in tasks:
            seconds = {**prepared["seconds"], "train": newsdl("train", task, "-w", ws),
                       "evaluate": newsdl("evaluate", task, "-w", ws)}
            metrics = json.loads((ws / "models" / task / "metrics.json").read_text())
            results.append({"corpus": prepared["corpus"], "task": task, "images": prepared["images"],
                            "seconds": seconds, "metrics": metrics})
            print(table(results[-1:]), flush=True)
    write_json(args.out, {"benchmark": "quality", "cpu_count": os.cpu_count(), "results": results,
                          "versions": versions()})
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
