"""Ingest-shaped inputs built from data that ships with the dependencies (real photos from
scikit-image and scikit-learn, gensim's Lee news corpus), so the featurize tests and benchmark
need neither the network nor the ingest stage."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from newsdl import workspace as wsp

# Photographs (not drawings or charts) among the files scikit-image and scikit-learn install.
_SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png",
                   "hubble_deep_field.jpg", "motorcycle_left.png", "ihc.png", "retina.jpg", "grass.png")
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")

_IMAGE_STRUCT = pa.struct([("image_id", pa.string()), ("path", pa.string()), ("url", pa.string()),
                           ("caption", pa.string())])
ARTICLES_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("url", pa.string()), ("published", pa.timestamp("ms", tz="UTC")),
    ("title", pa.string()), ("text", pa.string()), ("images", pa.list_(_IMAGE_STRUCT)), ("lat", pa.float64()),
    ("lon", pa.float64()), ("comments", pa.int64()), ("shares", pa.int64()), ("keywords", pa.list_(pa.string())),
    ("split", pa.string()), ("extra", pa.string()), ("input_file", pa.string()), ("input_record", pa.int64()),
])
IMAGES_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("article_id", pa.string()), ("path", pa.string()), ("url", pa.string()),
    ("caption", pa.string()), ("split", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("format", pa.string()),
])


def real_photos(max_side: int = 256) -> list[Image.Image]:
    """The bundled photographs as RGB or greyscale PIL images, longer side at most ``max_side``."""
    import skimage.data
    import sklearn.datasets

    files = [Path(skimage.data.__file__).parent / name for name in _SKIMAGE_PHOTOS]
    files += [Path(sklearn.datasets.__file__).parent / "images" / name for name in _SKLEARN_PHOTOS]
    photos = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in ("L", "I;16", "I") else "RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            photos.append(image.copy())
    return photos


def write_photos(folder: Path, n: int, max_side: int = 256) -> list[str]:
    """``n`` photo files (the bundled photos, repeated and mirrored), JPEG with every third one PNG;
    return their paths relative to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = real_photos(max_side)
    names = []
    for k in range(n):
        image = photos[k % len(photos)]
        if (k // len(photos)) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        name = f"photo_{k:05d}.{'png' if k % 3 == 2 else 'jpg'}"
        image.save(folder / name, **({"quality": 90} if name.endswith("jpg") else {}))
        names.append(name)
    return names


def write_colour_variants(folder: Path) -> dict[str, Image.Image]:
    """One photo in every colour model featurize must bring to RGB; name -> what it must look
    like (for the GIF: its first frame; the second is the negative)."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = real_photos(128)[2].convert("RGB")
    variants = {
        "grey.jpg": photo.convert("L"), "cmyk.jpg": photo.convert("CMYK"), "rgba.png": photo.convert("RGBA"),
        "palette.png": photo.convert("P"),
        "grey16.png": Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257),  # the full 16-bit range
    }
    for name, image in variants.items():
        image.save(folder / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    first, second = photo.convert("P"), Image.eval(photo, lambda v: 255 - v).convert("P")
    first.save(folder / "animated.gif", save_all=True, append_images=[second])
    variants["animated.gif"] = first
    variants["grey16.png"] = photo.convert("L")
    return {name: image.convert("RGB") for name, image in variants.items()}


def write_broken_images(root: Path) -> dict[str, str]:
    """Files featurize must skip, as paths relative to ``root``, each with the start of the reason
    it must give. `no_scan.jpg` passes every header check and fails only in the decoder."""
    root.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    real_photos(96)[0].save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    (root / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (root / "not_an_image.jpg").write_bytes(b"<html>404 not found</html>")
    (root / "no_scan.jpg").write_bytes(jpeg[:jpeg.index(b"\xff\xda")] + b"\xff\xd9")
    Image.new("1", (8000, 6000)).save(root / "bomb.png")  # 48 megapixels in a few kB
    outside = root.parent / f"{root.name}-outside.jpg"
    outside.write_bytes(jpeg)
    (root / "link_out.jpg").symlink_to(outside)
    return {"truncated.jpg": "image_truncated", "not_an_image.jpg": "image_not_an_image",
            "no_scan.jpg": "decode failed", "bomb.png": "image_too_large", "missing.jpg": "image_missing",
            f"../{outside.name}": "image_path_escapes", "link_out.jpg": "image_path_escapes"}


def lee_documents() -> list[str]:
    """gensim's Lee corpus: 300 Australian news articles, one a line."""
    from gensim.test.utils import datapath

    return Path(datapath("lee_background.cor")).read_text(encoding="utf-8").splitlines()


def write_ingest(ws: Path, articles: list[dict], images_root: Path | None) -> Path:
    """Write DIR/ingest/ as the ingest stage would: articles.parquet, images.parquet and a
    manifest. Each article is a dict with id, text, split and optionally title and images
    (a list of {"path", "caption"}, paths relative to ``images_root``)."""
    folder = ws / "ingest"
    folder.mkdir(parents=True, exist_ok=True)
    article_rows, image_rows = [], []
    for record, article in enumerate(articles):
        images = []
        for k, image in enumerate(article.get("images", [])):
            image_id = f"{article['id']}#{k}"
            images.append({"image_id": image_id, "path": image["path"], "url": None, "caption": image.get("caption", "")})
            width, height, fmt = _header(images_root / image["path"]) if images_root else (0, 0, None)
            image_rows.append({"image_id": image_id, "article_id": article["id"], "path": image["path"], "url": None,
                               "caption": image.get("caption", ""), "split": article["split"], "width": width,
                               "height": height, "format": fmt})
        article_rows.append({"id": article["id"], "source": article.get("source"), "url": None, "published": None,
                             "title": article.get("title"), "text": article["text"], "images": images, "lat": article.get("lat"),
                             "lon": article.get("lon"), "comments": None, "shares": None, "keywords": None,
                             "split": article["split"], "extra": None, "input_file": "testdata.jsonl",
                             "input_record": record})
    pq.write_table(pa.Table.from_pylist(article_rows, schema=ARTICLES_SCHEMA), folder / "articles.parquet")
    pq.write_table(pa.Table.from_pylist(image_rows, schema=IMAGES_SCHEMA), folder / "images.parquet")
    wsp.write_manifest(folder, "ingest", inputs=[], started=wsp.now(), outputs=["articles.parquet", "images.parquet"],
                       config={"images_root": str(images_root.resolve()) if images_root else None},
                       counts={"accepted": len(article_rows), "images_accepted": len(image_rows)})
    return folder


def _header(path: Path) -> tuple[int, int, str | None]:
    try:
        with Image.open(path) as image:
            return image.width, image.height, image.format
    except Exception:  # a broken file is what some tests want; ingest would have rejected it
        return 0, 0, None


def lee_articles(n_words: int, splits=(("train", 8), ("val", 1), ("test", 1))) -> list[dict]:
    """Lee articles repeated until about ``n_words`` words, split 80/10/10 by position."""
    docs = lee_documents()
    cycle = [name for name, weight in splits for _ in range(weight)]
    articles, words, k = [], 0, 0
    while words < n_words:
        text = docs[k % len(docs)]
        articles.append({"id": f"lee-{k}", "text": text, "split": cycle[k % len(cycle)]})
        words += len(text.split())
        k += 1
    return articles
