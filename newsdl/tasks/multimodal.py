"""What the two image-and-text tasks (caption, illustrate) share: `ImageTask`'s settings, the
image-level table (one row per featurized image: its FC7, its caption, its article's text features
and split), and featurizing new articles' images for `newsdl predict`.

The other tasks work per article with the article's images mean-pooled; these two work per
image, because a caption belongs to one picture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from newsdl import defaults as td
from newsdl.errors import UserError
from newsdl.tasks.task import Task

log = logging.getLogger("newsdl.tasks")


class ImageTask(Task):
    """A task over single images (with their article's text): one image is one example."""

    unit = "images"
    lr, patience, lr_half_life = td.MULTIMODAL_LR, td.MULTIMODAL_PATIENCE, None


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


def load_images(ws: Path, fitted: dict | None = None) -> Images:
    """Every featurized image of ``ws`` whose article has text features, in ingest order; with a
    trained model's ``fitted``, checked to have the sizes it reads."""
    import pyarrow.parquet as pq

    from newsdl.features.shards import positions_of, read_fc7
    from newsdl.tasks.data import load_corpus

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

    image_id, _, fc7 = read_fc7(sorted((ws / "features" / "images").glob("part-*.parquet")))
    if not len(image_id):
        raise UserError(f"{ws / 'features' / 'images'}: no featurized image")
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
    have = {"fc7_dim": fc7.shape[1], "text_dim": sum(corpus.arrays[f].shape[1] for f in td.MULTIMODAL_TEXT)}
    for key, want in ((k, (fitted or {}).get(k)) for k in have):
        if want is not None and int(want) != have[key]:
            raise UserError(f"{ws / 'features'}: {have[key]} values where the model reads {want} ({key}); retrain "
                            f"after featurize")
    return Images(image_id, article_id, corpus.split[rows].astype(str), [captions[i] or "" for i in at], fc7,
                  {f: corpus.arrays[f][rows] for f in td.MULTIMODAL_TEXT}, lead)


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


def featurize_images(ws: Path, table, root: Path, source: Path, dim: int):
    """FC7 of every usable image of the articles of ``table``, by featurize's own image featurizer:
    (the row of each image's article, its path, [n, dim] FC7, the images rejected)."""
    from newsdl.features import load_image_featurizer

    owners, paths = [], []
    for row, imgs in enumerate(table.column("images").to_pylist()):
        for img in imgs or []:
            if img.get("path"):
                owners.append(row)
                paths.append(img["path"])
    if not paths:
        return np.zeros(0, int), [], np.zeros((0, dim), np.float32), []
    fc7, reasons = load_image_featurizer(ws)(root, paths)
    if fc7.shape[1] != dim:
        raise UserError(f"{ws / 'features'}: image features of {fc7.shape[1]} values, the model reads {dim}; "
                        f"retrain after featurize")
    ids = table.column("id").to_pylist()
    keep, rejects = [], []
    for i, reason in enumerate(reasons):
        if reason is None:
            keep.append(i)
        else:
            rejects.append({"file": str(source), "id": str(ids[owners[i]]), "image": paths[i], "reason": reason})
            log.warning("image %s skipped: %s", paths[i], reason)
    keep = np.asarray(keep, int)
    return np.asarray(owners, int)[keep], [paths[i] for i in keep], fc7[keep], rejects


def new_article_text(ws: Path, table) -> dict[str, np.ndarray]:
    """The text features (td.MULTIMODAL_TEXT) of the articles of ``table``, made as the workspace's were."""
    from newsdl.features import load_text_featurizer

    feats = load_text_featurizer(ws)(list(table.column("text").to_pylist()), list(table.column("title").to_pylist()))
    return {f: np.asarray(feats[f], np.float32) for f in td.MULTIMODAL_TEXT}


def image_paths(ws: Path) -> dict[str, str]:
    """Each ingested image's path (relative to the images root), by image id."""
    import pyarrow.parquet as pq

    meta = pq.read_table(ws / "ingest" / "images.parquet", columns=["image_id", "path"])
    return dict(zip(map(str, meta.column("image_id").to_pylist()), meta.column("path").to_pylist()))


def featurize_new(ws: Path, table, root: Path, source: Path, dim: int):
    """The articles of ``table`` (validated by predict) and their usable images, featurized as the
    workspace's were: (NewImages, the images rejected)."""
    ids = [str(i) for i in table.column("id").to_pylist()]
    article_text = new_article_text(ws, table)
    owners, paths, fc7, rejects = featurize_images(ws, table, root, source, dim)
    images = NewImages(np.asarray(ids, dtype=object)[owners].astype(str) if len(owners) else np.zeros(0, str),
                       paths, fc7, {f: v[owners] for f, v in article_text.items()}, ids, article_text)
    return images, rejects
