"""`newsdl demo`: the sample corpus through every stage, ending in a table of results."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from newsdl.errors import UserError
from newsdl.workspace import read_manifest

log = logging.getLogger("newsdl.demo")

# VGG16 runs at 3-5 images/s on two CPU cores, so its FC7 over the demo's ~4,000 images alone
# would take 15+ minutes; a small CNN with random weights (which still separates the sample's
# scenes) keeps the whole demo inside ten minutes. Real runs use VGG16 FC7 with ImageNet weights.
DEMO_BACKBONE = "small_cnn"
DEMO_WEIGHTS = "random"


def run_demo(ws: Path, *, n_articles: int, seed: int, force: bool = False) -> dict:
    from newsdl.ingest.run import ingest
    from newsdl.sample.corpus import write_corpus

    timings = {}
    corpus = ws / "sample-corpus"
    start = time.monotonic()
    if force or not (corpus / "articles.jsonl").is_file():
        write_corpus(corpus, n_articles=n_articles, seed=seed)
    timings["sample-corpus"] = time.monotonic() - start

    start = time.monotonic()
    result = ingest([corpus / "articles.jsonl"], ws, images_root=corpus, force=force)
    timings["ingest"] = time.monotonic() - start
    if result.counts["accepted"] < 20:
        raise UserError(f"{corpus / 'articles.jsonl'}: only {result.counts['accepted']} articles accepted")

    rows = [("ingest", "articles accepted", result.counts["accepted"]),
            ("ingest", "images accepted", result.counts["images_accepted"]),
            ("ingest", "records rejected", result.counts["rejected"])]

    from newsdl.features import run_featurize

    start = time.monotonic()
    run_featurize(ws, backbone=DEMO_BACKBONE, weights=DEMO_WEIGHTS, force=force)
    timings["featurize"] = time.monotonic() - start
    counts = read_manifest(ws / "features")["counts"]
    rows += [("featurize", "vocabulary (words)", counts["vocab"]),
             ("featurize", "out-of-vocabulary share", float(counts["oov_rate"])),
             ("featurize", f"images featurized ({DEMO_BACKBONE})", counts["images_featurized"])]
    from newsdl.tasks import TASKS, evaluate_task, format_table, get, train_task

    tables = []
    for task in TASKS:
        start = time.monotonic()
        train_task(ws, task, force=force)
        metrics = evaluate_task(ws, task, force=force)
        timings[task] = time.monotonic() - start
        tables.append(format_table(metrics))
        main, higher_is_better = get(task).main_metric, get(task).higher_is_better
        best = max(metrics["baselines"].items(), key=lambda kv: kv[1][main] * (1 if higher_is_better else -1))
        rows += [(task, f"{main} (model)", float(metrics["test"][main])),
                 (task, f"{main} (best baseline: {best[0]})", float(best[1][main]))]

    _print_table(rows, timings)
    for table in tables:
        typer.echo("\n" + table)
    typer.echo(f"\nmodels, metrics.json and plots: {ws / 'models'}")
    return {"timings": timings, "rows": rows}


def _print_table(rows, timings) -> None:
    width = max(len(metric) for _, metric, _ in rows)
    rule = "-" * (width + 26)
    typer.echo(f"\n{'stage':<12} {'metric':<{width}} {'value':>12}\n{rule}")
    for stage, metric, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        typer.echo(f"{stage:<12} {metric:<{width}} {shown:>12}")
    typer.echo(rule)
    typer.echo("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
