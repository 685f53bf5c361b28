"""`newsdl predict TASK INPUT`: a trained model on new articles.

New articles go through ingest's readers and checks (same formats, same rules: a bad record is
rejected with its line, field and reason, a bad image is dropped), then through featurize's own
text and image featurizers (the saved word2vec, tokenizer settings and backbone), the model's
saved TF-IDF vocabulary and the gazetteer: exactly the inputs the model was trained on.
Predictions go to JSON Lines or Parquet (by --out's suffix); rejected records to
OUT.rejected.jsonl beside it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from newsdl import workspace
from newsdl.errors import UserError
from newsdl import defaults as td
from newsdl.tasks.data import PAD_ID, corpus_from_articles
from newsdl.tasks.layout import MODEL
from newsdl.tasks.prepare import model_inputs, read_saved, task_module

log = logging.getLogger("newsdl.tasks")


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


def featurize(ws: Path, saved, table, root: Path):
    """The model's input arrays for the articles of ``table``."""
    corpus = corpus_from_articles(table)
    features = saved.features
    if any(f in features for f in ("w2v_mean", "w2v_max", "tokens")):
        from newsdl.features import load_text_featurizer

        feats = load_text_featurizer(ws)(list(table.column("text").to_pylist()),
                                         list(table.column("title").to_pylist()))
        corpus.arrays["w2v_mean"], corpus.arrays["w2v_max"] = feats["w2v_mean"], feats["w2v_max"]
        tokens = np.full((len(corpus), td.CNN_TOKENS), PAD_ID, np.int32)
        width = min(td.CNN_TOKENS, feats["tokens"].shape[1])
        tokens[:, :width] = feats["tokens"][:, :width]
        corpus.arrays["tokens"] = tokens
    if "fc7" in features:
        corpus.arrays["fc7"], corpus.arrays["fc7_mask"] = _image_features(ws, table, root, saved)
    return corpus, model_inputs(corpus, features, saved.fitted)


def _image_features(ws: Path, table, root: Path, saved):
    """fc7 mean-pooled over each article's usable images; mask 0 where it has none."""
    from newsdl.features import load_image_featurizer

    images = table.column("images").to_pylist()
    owners, paths = [], []
    for row, imgs in enumerate(images):
        for img in imgs or []:
            if img.get("path"):
                owners.append(row)
                paths.append(img["path"])
    dim = int(saved.config["fitted"]["fc7_dim"])
    sums = np.zeros((len(images), dim), np.float32)
    counts = np.zeros(len(images), np.float32)
    if paths:
        feats, reasons = load_image_featurizer(ws)(root, paths)
        if feats.shape[1] != dim:
            raise UserError(f"{ws / 'features'}: image features of {feats.shape[1]} values, the model reads {dim}; "
                            f"retrain after featurize")
        for row, feat, reason, path in zip(owners, feats, reasons, paths):
            if reason is None:
                sums[row] += feat
                counts[row] += 1
            else:
                log.warning("image %s skipped: %s", path, reason)
    return sums / np.maximum(counts, 1)[:, None], (counts > 0).astype(np.float32)[:, None]


def predict_task(ws: Path, task: str, input_path: Path, *, out: Path | None = None,
                 images_root: Path | None = None, beam: int | None = None) -> dict:
    """Predict TASK for the articles of INPUT; write them to ``out`` (.jsonl or .parquet).
    Returns {out, predicted, rejected, rejected_file}. ``beam``: caption only."""
    if task in td.MULTIMODAL_TASKS:  # caption, illustrate: their own modules
        import importlib

        if beam is not None and task != "caption":
            raise UserError(f"--beam {beam}: only caption has this option")
        return importlib.import_module(f"newsdl.tasks.{task}").predict(
            ws, input_path, out=out, images_root=images_root, **({"beam": beam} if beam is not None else {}))
    ws, input_path = Path(ws), Path(input_path).expanduser()
    mod = task_module(task)
    saved = read_saved(ws, task)
    out = Path(out).expanduser() if out else default_out(ws, task, input_path)
    if out.suffix not in (".jsonl", ".parquet"):
        raise UserError(f"--out {out}: expected a .jsonl or .parquet file name")
    table, rejects, root = read_articles(input_path, images_root)
    rejected_file = out.with_name(out.name + ".rejected.jsonl") if rejects else None
    records_rejected = [r for r in rejects if "image" not in r]
    if table.num_rows == 0:
        first = f"; the first: {describe_reject(records_rejected[0])}" if records_rejected else ""
        raise UserError(f"{input_path}: no valid article ({len(records_rejected)} rejected){first}")

    from newsdl.tasks.data import dataset
    from newsdl.tasks.models import load

    corpus, x = featurize(ws, saved, table, root)
    model = load(saved.folder / MODEL)
    pred = mod.predict(model, dataset(x, {}, np.arange(len(corpus)), saved.config["batch_size"]), saved.fitted)
    records = mod.records(list(corpus.ids), pred, saved.fitted)
    write_predictions(out, records)
    write_rejects(rejected_file, rejects)
    return predict_summary(out, len(records), rejects, rejected_file)


def write_rejects(rejected_file: Path | None, rejects: list[dict]) -> None:
    """Write the input's rejected records and images beside the predictions, with one warning."""
    if rejected_file is None:
        return
    n_records = sum("image" not in r for r in rejects)
    workspace.write_text(rejected_file, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                for r in rejects))
    log.warning("%d records and %d images of the input were rejected (the first: %s); reasons in %s",
                n_records, len(rejects) - n_records, describe_reject(rejects[0]), rejected_file)


def predict_summary(out: Path, n: int, rejects: list[dict], rejected_file: Path | None) -> dict:
    """What predict returns: {out, predicted, rejected, images_rejected, rejected_file}."""
    n_records = sum("image" not in r for r in rejects)
    return {"out": str(out), "predicted": n, "rejected": n_records, "images_rejected": len(rejects) - n_records,
            "rejected_file": str(rejected_file) if rejected_file else None}


def write_predictions(out: Path, records: list[dict]) -> None:
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in records]
        with workspace.atomic_path(out) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
        return
    workspace.write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
