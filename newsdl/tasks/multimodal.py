"""What the two image-and-text tasks (caption, illustrate) share: the image-level table (one row
per featurized image: its FC7, its caption, its article's text features and split), training
settings, the fit loop with its callbacks, and featurizing new articles for `newsdl predict`.

The other tasks work per article with the article's images mean-pooled; these two work per
image, because a caption belongs to one picture.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from newsdl import defaults as td
from newsdl import workspace
from newsdl.errors import UserError
from newsdl.tasks.layout import CONFIG, MODEL, reset_for_training

log = logging.getLogger("newsdl.tasks")


@dataclass
class Images:
    """Featurized images with their caption and their article's text features, row-aligned."""

    image_id: np.ndarray  # str
    article_id: np.ndarray  # str
    split: np.ndarray  # the article's split
    caption: list[str]  # "" when the image has none
    fc7: np.ndarray  # [n, d] float32
    text: dict[str, np.ndarray] = field(default_factory=dict)  # w2v_mean, w2v_max of the article
    lead: np.ndarray | None = None  # bool: the article's first featurized image

    def __len__(self) -> int:
        return len(self.image_id)

    def rows(self, split: str, mask: np.ndarray | None = None) -> np.ndarray:
        keep = self.split == split
        return np.flatnonzero(keep if mask is None else keep & mask)


def load_images(ws: Path) -> Images:
    """Every featurized image of ``ws`` whose article has text features, in ingest order."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from newsdl.tasks.data import column_matrix, positions_of, load_corpus

    corpus = load_corpus(ws)
    if "fc7" not in corpus.available:
        raise UserError(f"{ws / 'features' / 'images'}: no image features; run `newsdl featurize` with images")
    missing = [f for f in td.MULTIMODAL_TEXT if f not in corpus.arrays]
    if missing:
        raise UserError(f"{ws / 'features' / 'text.parquet'}: no field '{missing[0]}'; run `newsdl featurize` "
                        f"with text")
    path = ws / "ingest" / "images.parquet"
    if not path.is_file():
        raise UserError(f"{path}: missing; rerun `newsdl ingest`")
    meta = pq.read_table(path, columns=["image_id", "article_id", "caption"])
    meta_ids = meta.column("image_id").to_numpy(zero_copy_only=False).astype(str)
    captions = meta.column("caption").to_pylist()

    ids, vecs = [], []
    for part in sorted((ws / "features" / "images").glob("part-*.parquet")):
        table = pq.read_table(part, columns=["image_id", "fc7"])
        table = table.filter(pc.is_valid(table.column("fc7")))
        if table.num_rows:
            ids.append(table.column("image_id").to_numpy(zero_copy_only=False).astype(str))
            vecs.append(column_matrix(table.column("fc7")))
    if not ids:
        raise UserError(f"{ws / 'features' / 'images'}: no featurized image")
    image_id, fc7 = np.concatenate(ids), np.vstack(vecs).astype(np.float32)
    at = positions_of(meta_ids, image_id)
    if (at < 0).any():
        bad = image_id[np.flatnonzero(at < 0)[0]]
        raise UserError(f"{ws / 'features' / 'images'}: image_id {bad!r} is not in {path}; "
                        f"rerun `newsdl featurize --force`")
    order = np.argsort(at, kind="stable")  # ingest order: an article's images in their order
    image_id, fc7, at = image_id[order], fc7[order], at[order]
    article_id = meta.column("article_id").to_numpy(zero_copy_only=False).astype(str)[at]
    rows = positions_of(corpus.ids, article_id)
    keep = rows >= 0
    image_id, fc7, at, article_id, rows = image_id[keep], fc7[keep], at[keep], article_id[keep], rows[keep]
    lead = np.ones(len(rows), bool)
    lead[1:] = article_id[1:] != article_id[:-1]
    return Images(image_id, article_id, corpus.split[rows].astype(str), [captions[i] or "" for i in at], fc7,
                  {f: corpus.arrays[f][rows] for f in td.MULTIMODAL_TEXT}, lead)


def settings(task: str, *, epochs=None, batch_size=None, lr=None, seed=None, patience=None, features=None,
             head=None, context=None, beam=None) -> dict:
    """The training settings of caption or illustrate, defaults filled in and checked."""
    if head is not None:
        raise UserError(f"--head {head}: only geoloc has heads to choose from")
    if features not in (None, "", []):
        raise UserError(f"--features {features}: {task} always reads the image's FC7 and the article's "
                        f"word2vec mean and max")
    if task != "caption":
        for name, value in (("context", context), ("beam", beam)):
            if value is not None:
                raise UserError(f"--{name} {value}: only caption has this option")
    s = {"epochs": (td.CAPTION_EPOCHS if task == "caption" else td.ILLUSTRATE_EPOCHS) if epochs is None else int(epochs),
         "batch_size": (td.CAPTION_BATCH if task == "caption" else td.ILLUSTRATE_BATCH)
         if batch_size is None else int(batch_size),
         "lr": td.MULTIMODAL_LR if lr is None else float(lr),
         "seed": td.SEED if seed is None else int(seed),
         "patience": td.MULTIMODAL_PATIENCE if patience is None else int(patience)}
    for name in ("epochs", "batch_size", "patience"):
        if s[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} {s[name]}: must be at least 1")
    if not 0 < s["lr"] < 10:
        raise UserError(f"--lr {s['lr']}: must be in (0, 10)")
    if task == "caption":
        s["context"] = td.CAPTION_CONTEXT if context is None else str(context)
        if s["context"] not in ("none", "article"):
            raise UserError(f"--context {context}: choose none or article")
        s["beam"] = check_beam(td.CAPTION_BEAM if beam is None else beam)
    return s


def check_beam(beam) -> int:
    beam = int(beam)
    if not 1 <= beam <= 50:
        raise UserError(f"--beam {beam}: must be between 1 (greedy) and 50")
    return beam


def split_or_hold_out(images: Images, rows: dict, seed: int) -> dict:
    """Without a val split, a fixed tenth of train (whole articles) is held out for early stopping."""
    if len(rows["train"]) < td.MIN_TRAIN:
        raise UserError(f"{len(rows['train'])} usable images in the train split, and training needs at least "
                        f"{td.MIN_TRAIN}; check the articles' field 'split' and their images")
    if len(rows["val"]) == 0:
        arts = np.unique(images.article_id[rows["train"]])
        held = set(np.random.default_rng(seed).permutation(arts)[:max(1, len(arts) // 10)])
        is_held = np.array([a in held for a in images.article_id[rows["train"]]])
        rows["val"], rows["train"] = rows["train"][is_held], rows["train"][~is_held]
        log.warning("no usable image in the val split: holding out %d training images for early stopping",
                    len(rows["val"]))
    return rows


def set_determinism(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def up_to_date(folder: Path, inputs: list[dict], config: dict, force: bool) -> dict | None:
    """The saved summary when training is up to date (and not forced), else None."""
    if force or not workspace.is_up_to_date(folder, inputs, config):
        return None
    log.info("%s: model up to date in %s (use --force to retrain)", config["task"], folder)
    saved = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    return {**saved.get("summary", {}), "skipped": True}


def start_training(folder: Path, force: bool) -> tuple[str, float]:
    reset_for_training(folder)
    if force:
        shutil.rmtree(folder / "run", ignore_errors=True)
    return workspace.now(), time.monotonic()


def fit(model, make_train_ds, val_ds, *, folder: Path, name: str, s: dict, steps: int, n_train: int,
        monitor: str, mode: str, identity: dict, extra_callbacks=()) -> dict:
    """model.fit with early stopping on ``monitor`` and the best epoch kept by ModelCheckpoint;
    BackupAndRestore lets a killed run resume from its last finished epoch (a run of another
    config starts afresh). ``make_train_ds(first_epoch)``: the training batches from that epoch on.
    Returns {best_epoch, epochs_run, val_best}; best.keras is in folder/run/."""
    import keras

    from newsdl.tasks.train import EpochLog, Publish, ResumableEarlyStopping, read_history, resume_epoch

    run_dir = folder / "run"
    previous = workspace.read_json(run_dir / "run.json")
    if previous != identity:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    workspace.clean_temporaries(run_dir)
    workspace.write_json(run_dir / "run.json", identity)
    done = workspace.read_json(run_dir / "done.json")
    if done is not None and (run_dir / "best.keras").is_file():
        log.info("%s: already trained in %s", name, run_dir)
        return done
    tmp_best = run_dir / (workspace.TMP_PREFIX + "best.keras")
    history_path = run_dir / "history.csv"
    start = resume_epoch(run_dir / "backup")
    # A resumed run continues early stopping's count and the best checkpoint's value from the rows
    # of the epochs it kept (rows written after the last backup are dropped with those epochs).
    rows = read_history(history_path, start)
    min_delta = td.MULTIMODAL_MIN_DELTA.get(monitor, 0.0)
    stopper = ResumableEarlyStopping(rows, mode=mode, monitor=monitor, patience=s["patience"], min_delta=min_delta)
    seen = [r[monitor] for r in rows if np.isfinite(r.get(monitor, np.nan))]
    best_so_far = (min if mode == "min" else max)(seen) if seen else None
    if start:
        log.info("%s: resuming after epoch %d (best %s %s)", name, start, monitor, best_so_far)
    if not (stopper.already_stopped(s["patience"]) or start >= s["epochs"]):
        callbacks = [
            *extra_callbacks,  # first: they add the val metric that the others read
            EpochLog(name, s["epochs"], n_train, monitor, unit="images"),
            keras.callbacks.CSVLogger(str(history_path), append=True),
            keras.callbacks.ModelCheckpoint(str(tmp_best), monitor=monitor, mode=mode, save_best_only=True,
                                            initial_value_threshold=best_so_far),
            Publish(tmp_best, run_dir / "best.keras"),
            stopper,
            keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
        ]
        model.fit(make_train_ds(start), validation_data=val_ds, epochs=s["epochs"], steps_per_epoch=steps,
                  callbacks=callbacks, verbose=0, shuffle=False)
    else:
        log.info("%s: early stopping had already ended this run", name)
    if not (run_dir / "best.keras").is_file():
        raise RuntimeError(f"{run_dir}: training ended without a checkpoint (no finite {monitor}?)")
    rows = read_history(history_path, None)
    values = [(r.get(monitor, np.nan), int(r["epoch"]) + 1) for r in rows]
    values = [(v, e) for v, e in values if np.isfinite(v)]
    best = (min if mode == "min" else max)(values) if values else (float("nan"), 0)
    done = {"best_epoch": best[1], "epochs_run": len(rows), "val_best": round(float(best[0]), 6),
            "monitor": monitor}
    workspace.write_json(run_dir / "done.json", done)
    return done


def publish(folder: Path, files: dict[str, Path]) -> None:
    """Copy each run file onto its final name in ``folder``, atomically."""
    for final, src in files.items():
        with workspace.atomic_path(folder / final) as tmp:
            shutil.copyfile(src, tmp)


# ------------------------------------------------------------------ new articles (predict)

@dataclass
class NewImages:
    """The images of new articles, featurized as the workspace's were."""

    article_id: np.ndarray  # str, one per usable image
    path: list[str]
    fc7: np.ndarray
    text: dict[str, np.ndarray]  # per image: its article's w2v_mean, w2v_max
    articles: list[str]  # every valid article's id (also those without a usable image)
    article_text: dict[str, np.ndarray]  # per article


def featurize_new(ws: Path, input_path: Path, images_root, out: Path, saved_fc7_dim: int):
    """Read INPUT as ingest does, featurize text and images; returns (NewImages, rejects, rejected_file)."""
    from newsdl.features import load_image_featurizer, load_text_featurizer
    from newsdl.tasks.predict import describe_reject, read_articles, write_rejects

    table, rejects, root = read_articles(input_path, images_root)
    records_rejected = [r for r in rejects if "image" not in r]
    if table.num_rows == 0:
        first = f"; the first: {describe_reject(records_rejected[0])}" if records_rejected else ""
        raise UserError(f"{input_path}: no valid article ({len(records_rejected)} rejected){first}")
    ids = [str(i) for i in table.column("id").to_pylist()]
    feats = load_text_featurizer(ws)(list(table.column("text").to_pylist()), list(table.column("title").to_pylist()))
    article_text = {f: np.asarray(feats[f], np.float32) for f in td.MULTIMODAL_TEXT}
    owners, paths = [], []
    for row, imgs in enumerate(table.column("images").to_pylist()):
        for img in imgs or []:
            if img.get("path"):
                owners.append(row)
                paths.append(img["path"])
    fc7 = np.zeros((0, saved_fc7_dim), np.float32)
    keep = []
    if paths:
        fc7, reasons = load_image_featurizer(ws)(root, paths)
        if fc7.shape[1] != saved_fc7_dim:
            raise UserError(f"{ws / 'features'}: image features of {fc7.shape[1]} values, the model reads "
                            f"{saved_fc7_dim}; retrain after featurize")
        for i, reason in enumerate(reasons):
            if reason is None:
                keep.append(i)
            else:
                rejects.append({"file": str(input_path), "id": ids[owners[i]], "image": paths[i], "reason": reason})
                log.warning("image %s skipped: %s", paths[i], reason)
    keep = np.asarray(keep, int)
    own = np.asarray(owners, int)[keep] if len(keep) else np.zeros(0, int)
    images = NewImages(np.asarray(ids, dtype=object)[own].astype(str) if len(own) else np.zeros(0, str),
                       [paths[i] for i in keep], fc7[keep] if len(keep) else fc7[:0],
                       {f: v[own] for f, v in article_text.items()}, ids, article_text)
    rejected_file = out.with_name(out.name + ".rejected.jsonl") if rejects else None
    write_rejects(rejected_file, rejects)
    return images, rejects, rejected_file


def read_saved(ws: Path, task: str, extra: tuple[str, ...] = ()) -> tuple[Path, dict]:
    folder = ws / "models" / task
    for name in (CONFIG, MODEL, *extra):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: no trained {task} model ({name} missing); run `newsdl train {task} -w {ws}` "
                            f"first")
    from newsdl.tasks.data import check_model

    check_model(ws, folder, task)
    return folder, json.loads((folder / CONFIG).read_text(encoding="utf-8"))
