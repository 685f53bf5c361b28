"""`newsdl demo`: the sample corpus through every stage, ending in a table of results."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from newsdl.errors import UserError

log = logging.getLogger("newsdl.demo")


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
    _print_table(rows, timings)
    return {"timings": timings, "rows": rows}


def _print_table(rows, timings) -> None:
    typer.echo("\nstage        metric                          value")
    typer.echo("-" * 56)
    for stage, metric, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        typer.echo(f"{stage:<12} {metric:<31} {shown}")
    typer.echo("-" * 56)
    typer.echo("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
