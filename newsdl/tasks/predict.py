"""`newsdl predict TASK INPUT`: a trained model on new articles, the same for every task.

New articles go through ingest's readers and checks (same formats, same rules: a bad record is
rejected with its line, field and reason, a bad image is dropped), then through featurize's own
text and image featurizers (the saved word2vec, tokenizer settings and backbone) and what the
model fitted on train (Task.predict): exactly the inputs the model was trained on.
Predictions go to JSON Lines, CSV or Parquet (by --out's suffix), or as JSON Lines to stdout
(``--out -``, for pipes: the log stays on stderr); rejected records to OUT.rejected.jsonl beside
it (with ``-``: beside the default output file).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


from newsdl import workspace
from newsdl.errors import UserError
from newsdl.tasks import get
from newsdl.tasks.task import read_saved

log = logging.getLogger("newsdl.tasks")
STDOUT = "-"  # --out -: JSON Lines to stdout
OUT_SUFFIXES = (".jsonl", ".csv", ".parquet")
PREDICT_ONLY = ("gallery",)  # the options of Task.predict_options, of any task


def default_out(ws: Path, task: str, input_path: Path) -> Path:
    stem = input_path.name.split(".")[0] or "input"
    return ws / "models" / task / "predictions" / f"{stem}.jsonl"


def read_articles(input_path: Path, images_root: Path | None):
    """Articles of INPUT validated as ingest does: (articles table, rejected records)."""
    import pyarrow as pa

    from newsdl.ingest import readers
    from newsdl.ingest.schema import ARTICLES
    from newsdl.ingest.validate import Seen, check_batch

    if not input_path.is_file():
        raise UserError(f"{input_path}: no such file")
    readers.detect_format(input_path)
    root = Path(images_root).expanduser().resolve() if images_root else input_path.resolve().parent
    if not root.is_dir():
        raise UserError(f"--images-root {root}: no such folder")
    tables, rejects, seen = [], [], Seen()
    for batch in readers.read(input_path, readers.Renamer({})):
        articles, _images, rejected = check_batch(batch, seen, root)  # parse rejects included
        rejects += rejected
        if articles.num_rows:
            tables.append(articles)
    table = pa.concat_tables(tables) if tables else ARTICLES.empty_table()
    return table, rejects, root


def describe_reject(rej: dict) -> str:
    kind = "line" if "line" in rej else "row"
    field = f": field '{rej['field']}'" if rej.get("field") else ""
    return f"{rej.get('file')}:{kind} {rej.get(kind)}{field}: {rej.get('reason')}"


def predict_task(ws: Path, task: str, input_path: Path, *, out: Path | None = None,
                 images_root: Path | None = None, **options) -> dict:
    """Predict TASK for the articles of INPUT; write them to ``out`` (.jsonl or .parquet).
    Returns {out, predicted, unit, rejected, images_rejected, rejected_file}. ``options``: the
    task's evaluate options (caption: beam; None: the one it was trained with) and its predict-only
    ones (``Task.predict_options``: illustrate's gallery)."""
    ws, input_path, t = Path(ws), Path(input_path).expanduser(), get(task)
    own = t.predict_settings({k: options.pop(k) for k in list(options) if k in PREDICT_ONLY})
    t.use_options(options)  # a usage mistake is told before the model is read
    saved = read_saved(ws, t)
    options = {**t.use_options(options, saved), **own}
    to_stdout = str(out) == STDOUT
    out = default_out(ws, task, input_path) if not out or to_stdout else Path(out).expanduser()
    if out.suffix not in OUT_SUFFIXES:
        raise UserError(f"--out {out}: expected -, or a file name ending in {', '.join(OUT_SUFFIXES)}")
    table, rejects, root = read_articles(input_path, images_root)
    records_rejected = [r for r in rejects if "image" not in r]
    if table.num_rows == 0:
        first = f"; the first: {describe_reject(records_rejected[0])}" if records_rejected else ""
        raise UserError(f"{input_path}: no valid article ({len(records_rejected)} rejected){first}")
    records, image_rejects, (count, unit) = t.predict(ws, saved, table, root, input_path, **options)
    rejects += image_rejects
    rejected_file = out.with_name(out.name + ".rejected.jsonl") if rejects else None
    if to_stdout:
        sys.stdout.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        sys.stdout.flush()
    else:
        write_predictions(out, records)
    write_rejects(rejected_file, rejects)
    return {**predict_summary(STDOUT if to_stdout else out, count, rejects, rejected_file), "unit": unit}


def write_rejects(rejected_file: Path | None, rejects: list[dict]) -> None:
    """Write the input's rejected records and images beside the predictions, with one warning."""
    if rejected_file is None:
        return
    n_records = sum("image" not in r for r in rejects)
    workspace.write_text(rejected_file, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                for r in rejects))
    log.warning("%d records and %d images of the input were rejected (the first: %s); reasons in %s",
                n_records, len(rejects) - n_records, describe_reject(rejects[0]), rejected_file)


def predict_summary(out: Path | str, n: int, rejects: list[dict], rejected_file: Path | None) -> dict:
    """What predict returns: {out, predicted, rejected, images_rejected, rejected_file}."""
    n_records = sum("image" not in r for r in rejects)
    return {"out": str(out), "predicted": n, "rejected": n_records, "images_rejected": len(rejects) - n_records,
            "rejected_file": str(rejected_file) if rejected_file else None}


def flat_rows(records: list[dict]) -> list[dict]:
    """Records with their nested values (places, candidates, ranked lists) as JSON text: one
    scalar per cell, as ingest reads nested fields from CSV."""
    return [{k: (json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v) for k, v in r.items()}
            for r in records]


def write_predictions(out: Path, records: list[dict]) -> None:
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with workspace.atomic_path(out) as tmp:
            pq.write_table(pa.Table.from_pylist(flat_rows(records)), tmp)
        return
    if out.suffix == ".csv":
        import pandas as pd

        with workspace.atomic_path(out) as tmp:
            pd.DataFrame(flat_rows(records)).to_csv(tmp, index=False)
        return
    workspace.write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
