"""`newsdl featurize` as a stage: read the ingest output, make the text and image features,
record what made them in features/manifest.json, and load them back for `newsdl predict`.

Three ways to run it:
- unsharded (the default): text, all images (as shard 0/1), merge check, manifest;
- ``shard=(I, N)``: only image shard I of N, for HPC job arrays; shards run in parallel;
- ``merge=True``: after every shard finished: text (unless off), merge check, manifest.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from newsdl import workspace as wsp
from newsdl.errors import UserError
from newsdl import defaults as fd
from newsdl.features import shards
from newsdl.features.backbones import get_backbone, preprocessing, resolve_weights
from newsdl.features.tokenize import load_stopwords

log = logging.getLogger(__name__)

STAGE = "features"
# Bump when `tokenize` changes what it returns: text features made before are then stale.
TOKENIZER = "newsdl-tokenize-1"
_ARTICLE_COLUMNS = ("id", "title", "text", "split")
_IMAGE_COLUMNS = ("image_id", "article_id", "path")
# Reasons of images that ingest found usable and that are gone or changed now.
_GONE = ("image_changed", "image_missing")


@dataclass
class Ingest:
    """The ingest stage's output, checked before any work starts."""

    folder: Path
    images_root: Path | None

    @property
    def articles(self) -> Path:
        return self.folder / "articles.parquet"

    @property
    def images(self) -> Path:
        return self.folder / "images.parquet"

    @functools.cached_property
    def articles_sha(self) -> str:
        return wsp.sha256_file(self.articles)

    @functools.cached_property
    def images_sha(self) -> str:
        return wsp.sha256_file(self.images)


def read_ingest(ws: Path) -> Ingest:
    folder = ws / "ingest"
    manifest = wsp.require_stage(folder, "run `newsdl ingest INPUT...` first")
    for path, columns in ((folder / "articles.parquet", _ARTICLE_COLUMNS), (folder / "images.parquet", _IMAGE_COLUMNS)):
        try:
            names = pq.read_schema(path).names
        except FileNotFoundError:
            raise UserError(f"{path}: missing; rerun `newsdl ingest --force`") from None
        except (OSError, pa.ArrowInvalid) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({exc}); rerun `newsdl ingest --force`") from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise UserError(f"{path}: field '{missing[0]}' is missing; is this the output of `newsdl ingest`?")
    root = (manifest.get("config") or {}).get("images_root")
    return Ingest(folder, Path(root) if root else None)


def run_featurize(workspace=None, *, text: bool | None = None, images: bool = True,
                  shard: tuple[int, int] | str | None = None, merge: bool = False,
                  pretrained_vectors: str | Path | None = None, stopwords: str | None = None,
                  max_tokens: int = fd.MAX_TOKENS, vector_size: int = fd.W2V_DIM, window: int = fd.W2V_WINDOW,
                  min_count: int = fd.W2V_MIN_COUNT, epochs: int = fd.W2V_EPOCHS,
                  backbone: str = fd.BACKBONE, weights: str = fd.WEIGHTS, layer: str | None = None,
                  image_size: int | None = None, batch_size: int | None = None, gpu: str = "off",
                  chunk_size: int = fd.IMAGE_CHUNK, max_images: int | None = None, force: bool = False,
                  reproducible: bool | None = None) -> dict:
    """Run the featurize stage on ``workspace``; return what it did (counts, timings, images/s).

    ``text`` defaults to True, except with ``shard``, which only processes images. ``gpu`` is
    "off", "on" (exit 2 without a GPU) or "auto" (fall back to the CPU with a warning).
    """
    ws = wsp.resolve(workspace)
    if isinstance(shard, str):
        shard = shards.parse_shard(shard)
    _check_options(text=text, images=images, shard=shard, merge=merge, gpu=gpu,
                   numbers={"--max-tokens": max_tokens, "--vector-size": vector_size, "--window": window,
                            "--min-count": min_count, "--epochs": epochs, "--batch-size": batch_size or 1,
                            "--chunk-size": chunk_size, "--max-images": max_images or 1})
    if image_size is not None and image_size < 32:
        raise UserError(f"--image-size {image_size}: must be at least 32")
    text = (shard is None) if text is None else text
    folder = ws / STAGE
    ingest = read_ingest(ws)
    if gpu != "off" and images and not merge:
        # An explicit --gpu is checked first, even when nothing needs doing: a bad one fails in
        # seconds, never after word2vec, and never passes silently.
        _device(gpu)

    if shard is not None:
        image_cfg, weights_ = _image_config(backbone, weights, layer, image_size, max_images)
        # Shards of one job array run at once: each holds only its own lock.
        with wsp.stage_lock(folder / "images", f"featurize --shard {shard[0]}/{shard[1]}",
                            name=f"-shard-{shard[0]}-of-{shard[1]}"):
            wsp.invalidate(folder)
            return {"images": _image_shard(ws, ingest, image_cfg, weights_, shard, gpu=gpu,
                                           batch_size=batch_size, chunk_size=chunk_size, force=force)}
    with wsp.stage_lock(folder, "featurize"):
        return _featurize_all(ws, folder, ingest, text=text, images=images, merge=merge,
                              pretrained_vectors=pretrained_vectors, stopwords=stopwords, max_tokens=max_tokens,
                              w2v={**asdict_w2v(vector_size, window, min_count, epochs),
                                   "reproducible": reproducible},
                              backbone=backbone,
                              weights=weights, layer=layer, image_size=image_size, max_images=max_images,
                              batch_size=batch_size, gpu=gpu, chunk_size=chunk_size, force=force)


def _featurize_all(ws: Path, folder: Path, ingest: Ingest, *, text, images, merge, pretrained_vectors, stopwords,
                   max_tokens, w2v, backbone, weights, layer, image_size, max_images, batch_size, gpu, chunk_size,
                   force) -> dict:
    text_cfg = _text_config(pretrained_vectors, stopwords, max_tokens, w2v, ingest.articles) if text else None
    image_cfg = weights_ = n_parts = None
    if images and merge:
        n_parts, parts = shards.find_parts(folder / "images")
        image_cfg = _parts_config(parts, ingest)
    elif images:
        image_cfg, weights_ = _image_config(backbone, weights, layer, image_size, max_images)
    inputs = ([{"path": "ingest/articles.parquet", "sha256": ingest.articles_sha}] if text_cfg else []) + \
             ([{"path": "ingest/images.parquet", "sha256": ingest.images_sha}] if image_cfg else [])
    config = {"text": text_cfg, "images": image_cfg}
    if not force and wsp.is_up_to_date(folder, inputs, config):
        log.info("featurize: %s is up to date; nothing to do (--force to redo)", folder)
        return {"skipped": True, "manifest": wsp.read_manifest(folder)}

    wsp.invalidate(folder)
    for leftovers in (folder, folder / "images"):  # unsharded and merge runs own the whole folder
        wsp.clean_temporaries(leftovers)
    started = wsp.now()
    result: dict = {"skipped": False}
    if text_cfg:
        result["text"] = _run_text(ws, ingest, text_cfg, pretrained_vectors, force=force)
    if image_cfg:
        if not merge:
            n_parts = 1
            shards.remove_other_counts(folder / "images", keep_n=1)
            result["images"] = _image_shard(ws, ingest, image_cfg, weights_, (0, 1), gpu=gpu,
                                            batch_size=batch_size, chunk_size=chunk_size, force=force)
        result["merge"] = _merge(ws, ingest, n_parts, image_cfg)
    result["manifest"] = _write_manifest(folder, inputs, config, result, started, n_parts)
    return result


def merge_shards(workspace=None) -> dict:
    """Check that the image parts cover every image in scope exactly once (featurized or
    rejected), from one config and the current ingest output; write images/rejected.jsonl.
    (`run_featurize(merge=True)` does this and also finishes the text part and the manifest.)"""
    ws = wsp.resolve(workspace)
    return _merge(ws, read_ingest(ws))


def _merge(ws: Path, ingest: Ingest, n_expected: int | None = None, config_expected: dict | None = None) -> dict:
    folder = ws / STAGE / "images"
    n, parts = shards.find_parts(folder)
    if n_expected is not None and n != n_expected:
        raise UserError(f"{folder}: found parts of {n} shards, expected {n_expected}")
    config = _parts_config(parts, ingest)
    if config_expected is not None and config != config_expected:
        raise UserError(f"{folder}: the parts were made with other image settings; rerun with --force")
    expected = _images_in_scope(ingest, config["max_images"]).column("image_id")
    counts = shards.check_coverage(folder, parts, n, expected)
    if n == 1:  # one part is an unsharded run's (or a one-shard array's): nothing was merged
        log.info("images: all %d checked: %d featurized, %d rejected", counts["images"], counts["featurized"],
                 counts["rejected"])
    else:
        log.info("merge: %d parts cover all %d images: %d featurized, %d rejected", n, counts["images"],
                 counts["featurized"], counts["rejected"])
    return counts


def asdict_w2v(vector_size: int, window: int, min_count: int, epochs: int) -> dict:
    from newsdl.features.text import Word2VecConfig

    return asdict(Word2VecConfig(vector_size=vector_size, window=window, min_count=min_count, epochs=epochs))


def _check_options(*, text, images, shard, merge, gpu, numbers: dict) -> None:
    if shard is not None and merge:
        raise UserError("--shard and --merge: a shard job featurizes images, the merge job runs after all of them")
    if shard is not None and text:
        raise UserError("--shard processes images only; make the text features with `newsdl featurize "
                        "--no-images` or in the `--merge` job")
    if shard is not None and not images:
        raise UserError("--shard with --no-images: a shard has nothing but images to do")
    if text is False and not images:
        raise UserError("--no-text and --no-images: nothing to do")
    if gpu not in ("off", "on", "auto"):
        raise UserError(f"--gpu {gpu}: expected --gpu or --gpu auto")
    for name, value in numbers.items():
        if value < 1:
            raise UserError(f"{name} {value}: must be at least 1")


def _text_config(pretrained, stopwords, max_tokens, w2v: dict, articles: Path | None = None) -> dict:
    from newsdl.features.text import OFFSET, OOV, PAD, reproducible_mode
    from newsdl.features.vectors import check_pretrained, vectors_sha256

    stop = load_stopwords(stopwords)
    if pretrained is not None:
        path = Path(pretrained).expanduser()
        check_pretrained(path)  # a missing file or a refused pickle fails before any work
        source = {"pretrained": {"file": path.name, "sha256": vectors_sha256(path)}, "word2vec": None}
    else:
        # Resolved here, not at training, so that the config (and the up-to-date check) says it.
        mode = reproducible_mode(w2v.get("reproducible"), articles)
        source = {"pretrained": None, "word2vec": {**w2v, "reproducible": mode, "train_splits": ["train"]}}
    return {"tokenizer": TOKENIZER, "title": True, "stopwords": sorted(stop) if stop else None,
            "max_tokens": max_tokens, **source, "token_ids": {"pad": PAD, "oov": OOV, "offset": OFFSET}}


def _run_text(ws: Path, ingest: Ingest, cfg: dict, pretrained, *, force: bool) -> dict:
    from newsdl.features import text as tx
    from newsdl.features.vectors import load_pretrained, read_vectors, save_vectors

    folder = ws / STAGE
    out, kv_path = folder / "text.parquet", folder / "word2vec.kv"
    identity = {"config": cfg, "inputs": {"articles.parquet": ingest.articles_sha}}
    meta = shards.read_meta(out)
    if not force and kv_path.is_file() and shards.same_run(meta, identity):
        log.info("text features: up to date (%s)", out)
        return {**meta["counts"], "word2vec": meta.get("word2vec"), "skipped": True}
    start = time.monotonic()
    stop = frozenset(cfg["stopwords"]) if cfg["stopwords"] else None
    with tx.token_cache(folder) as cache:
        tx.tokenize_articles(ingest.articles, cache, stop)
        if pretrained is not None:
            vectors = tx.restrict_vectors(load_pretrained(Path(pretrained)), tx.corpus_vocabulary(cache))
            stats = {"pretrained": cfg["pretrained"]["file"], "vocab": len(vectors)}
        else:
            vectors, stats = tx.train_word2vec(tx.ParquetCorpus(cache), tx.Word2VecConfig(
                **{k: v for k, v in cfg["word2vec"].items() if k != "train_splits"}), source=str(ingest.articles))
        save_vectors(vectors, kv_path)
        # The features index the saved file, in whatever order gensim wrote it.
        report = tx.write_text_features(cache, read_vectors(kv_path), out, cfg["max_tokens"],
                                        {**identity, "word2vec": stats})
    return {**report, "word2vec": stats, "seconds": round(time.monotonic() - start, 2)}


def _image_config(backbone: str, weights: str, layer, image_size, max_images) -> tuple[dict, object]:
    bb = get_backbone(backbone)
    resolved = resolve_weights(weights, bb)
    size = image_size or bb.size
    return {"backbone": bb.name, "layer": layer or bb.layer, "weights": resolved.record(), "image_size": size,
            "preprocessing": preprocessing(bb, size, fd.CROP_FRACTION), "max_images": max_images}, resolved


@functools.cache
def _device(gpu: str) -> str | None:
    """The mixed-precision policy for ``gpu`` (None: the CPU); decided, and logged, once a process."""
    from newsdl.features import images as img

    return img.select_device(gpu)


def _images_in_scope(ingest: Ingest, max_images: int | None) -> pa.Table:
    # bytes and mtime_ns (what ingest saw of each file) are absent from workspaces made before them.
    names = pq.read_schema(ingest.images).names
    table = pq.read_table(ingest.images, columns=[*_IMAGE_COLUMNS, *(c for c in ("bytes", "mtime_ns") if c in names)])
    return table.slice(0, max_images) if max_images else table


def _image_shard(ws: Path, ingest: Ingest, cfg: dict, weights, shard: tuple[int, int], *, gpu: str,
                 batch_size, chunk_size: int, force: bool) -> dict:
    i, n = shard
    label = "images" if n == 1 else f"images {i}/{n}"  # an unsharded run is the one shard 0/1
    folder = ws / STAGE / "images"
    part = folder / shards.part_name(i, n)
    identity = {"config": cfg, "inputs": {"images.parquet": ingest.images_sha}, "shard": [i, n]}
    meta = shards.read_meta(part)
    if not force and shards.same_run(meta, identity):
        log.info("%s: up to date (%s)", label, part)
        return {**meta["counts"], "chunks_computed": 0, "chunks_reused": 0, "skipped": True}
    shards.remove_other_counts(folder, keep_n=n)
    scope = _images_in_scope(ingest, cfg["max_images"])
    rows = scope.take(shards.shard_positions(scope.num_rows, shard))
    store = shards.ChunkStore(folder / f".chunks-{i}-of-{n}", {**identity, "chunk_size": chunk_size})
    if force:
        store.clear()
    n_chunks = math.ceil(rows.num_rows / chunk_size)
    done = store.done()
    todo = [k for k in range(n_chunks) if k not in done]
    log.info("%s: %d images in %d chunk%s, %d done before", label, rows.num_rows, n_chunks,
             "" if n_chunks == 1 else "s", n_chunks - len(todo))
    stats = {"chunks_computed": len(todo), "chunks_reused": n_chunks - len(todo)}
    runtime = {}
    if todo:
        if rows.num_rows and ingest.images_root is None:
            raise UserError(f"{ingest.folder / 'manifest.json'}: config.images_root is null but images.parquet lists "
                            f"images; rerun `newsdl ingest --images-root DIR`")
        runtime = _compute_chunks(rows, todo, chunk_size, store, ingest.images_root, cfg, weights,
                                  policy=_device(gpu), batch_size=batch_size, desc=label)
    counts = store.finalize(n_chunks, part, folder / shards.rejected_name(i, n), identity, {"runtime": runtime})
    return {**counts, **stats, **runtime}


def _compute_chunks(rows: pa.Table, todo: list[int], chunk_size: int, store, root: Path, cfg: dict, weights,
                    *, policy, batch_size, desc: str) -> dict:
    import numpy as np

    from newsdl.features import images as img

    ids, article_ids, paths = (rows.column(c).to_pylist() for c in _IMAGE_COLUMNS)
    recorded = list(zip(rows.column("bytes").to_pylist(), rows.column("mtime_ns").to_pylist())) \
        if {"bytes", "mtime_ns"} <= set(rows.column_names) else None
    spans = [range(k * chunk_size, min((k + 1) * chunk_size, len(ids))) for k in todo]
    ext = img.build_extractor(get_backbone(cfg["backbone"]), weights, layer=cfg["layer"], size=cfg["image_size"],
                              policy=policy)
    batch = batch_size or (fd.IMAGE_BATCH_GPU if policy else fd.IMAGE_BATCH_CPU)
    start = time.monotonic()
    stream = img.featurize_paths(ext, root, [paths[p] for span in spans for p in span], batch, desc=desc,
                                 recorded=[recorded[p] for span in spans for p in span] if recorded else None)
    n_images, gone = 0, []
    for k, span in zip(todo, spans):
        features = np.zeros((len(span), ext.dim), np.float32)
        reasons = []
        for j, (feature, reason) in zip(range(len(span)), stream):
            if feature is not None:
                features[j] = feature
            reasons.append(reason)
        store.write(k, shards.chunk_table([ids[p] for p in span], [article_ids[p] for p in span],
                                          [paths[p] for p in span], features, reasons, cfg["backbone"]))
        gone += [paths[p] for p, reason in zip(span, reasons) if reason and reason.startswith(_GONE)]
        n_images += len(span)
    stream.close()  # ends its progress bar now, which logs the images/s
    if gone:
        # As with any bad image, a file changed since ingest costs only itself, never the run; the
        # warning says how to take it back in.
        log.warning("%d image files changed or were deleted since ingest checked them (the first: %s); they are "
                    "skipped: rerun `newsdl ingest` to check them again", len(gone), root / gone[0])
    seconds = time.monotonic() - start
    rate = n_images / max(seconds, 1e-9)
    log.info("%s: %d images in %.1f s, %.1f images/s (%s, batch %d)", desc, n_images, seconds, rate,
             policy or "float32 on the CPU", batch)
    return {"device": "gpu" if policy else "cpu", "policy": policy or "float32", "dim": ext.dim,
            "pooled": ext.pooled, "batch_size": batch, "seconds": round(seconds, 2), "images_per_s": round(rate, 2)}


def _parts_config(parts: dict[int, Path], ingest: Ingest) -> dict:
    metas = {i: shards.read_meta(path) or {} for i, path in parts.items()}
    first = metas[min(metas)]
    for i, meta in metas.items():
        if meta.get("config") != first.get("config"):
            raise UserError(f"{parts[i]}: made with other image settings than {parts[min(metas)].name}; "
                            f"rerun the shards with the same options and --force")
        if meta.get("inputs") != {"images.parquet": ingest.images_sha}:
            raise UserError(f"{parts[i]}: made from another ingest/images.parquet; rerun the shards with --force")
    return first["config"]


def _write_manifest(folder: Path, inputs: list, config: dict, result: dict, started: str, n_parts) -> dict:
    counts, outputs, extra = {}, [], {}
    if "text" in result:
        t = result["text"]
        counts.update({k: t[k] for k in ("articles", "words", "oov_words", "oov_rate", "articles_no_known_words",
                                         "vocab")})
        outputs += ["text.parquet", "word2vec.kv"]
        extra["text"] = {"word2vec": t.get("word2vec"), "oov_rate_by_split": t["oov_rate_by_split"]}
    if "merge" in result:
        m = result["merge"]
        counts.update({"images": m["images"], "images_featurized": m["featurized"], "images_rejected": m["rejected"]})
        outputs += [f"images/{shards.part_name(i, n_parts)}" for i in range(n_parts)] + ["images/rejected.jsonl"]
        runtimes = [(shards.read_meta(folder / o) or {}).get("runtime", {}) for o in outputs if o.startswith("images/part-")]
        extra["images"] = {"parts": n_parts, "runtime": runtimes}
    return wsp.write_manifest(folder, STAGE, inputs=inputs, config=config, counts=counts, outputs=outputs,
                              started=started, extra=extra)


def load_text_featurizer(workspace=None):
    """The tokenizer settings and vectors featurize used, to featurize new articles' text:
    ``load_text_featurizer(ws)(texts, titles)`` returns the same columns as text.parquet."""
    from newsdl.features.text import TextFeaturizer
    from newsdl.features.vectors import read_vectors

    folder = wsp.resolve(workspace) / STAGE
    cfg = (wsp.require_stage(folder, "run `newsdl featurize` first").get("config") or {}).get("text")
    if cfg is None:
        raise UserError(f"{folder}: no finished text features; run `newsdl featurize` first")
    if cfg.get("tokenizer") != TOKENIZER:
        raise UserError(f"{folder}: text features made by tokenizer {cfg.get('tokenizer')}, this is {TOKENIZER}; "
                        f"rerun `newsdl featurize --force`")
    stop = frozenset(cfg["stopwords"]) if cfg["stopwords"] else None
    return TextFeaturizer(read_vectors(folder / "word2vec.kv"), cfg["max_tokens"], stop)


def load_image_featurizer(workspace=None, *, gpu: str = "off", batch_size: int | None = None):
    """The network, weights and preprocessing featurize used, to featurize new images:
    ``load_image_featurizer(ws)(images_root, relative_paths)`` returns (features, reasons)."""
    folder = wsp.resolve(workspace) / STAGE
    cfg = (wsp.require_stage(folder, "run `newsdl featurize` first").get("config") or {}).get("images")
    if cfg is None:
        raise UserError(f"{folder}: no finished image features; run `newsdl featurize` first")
    bb = get_backbone(cfg["backbone"])
    weights = resolve_weights(cfg["weights"]["spec"], bb)
    if weights.sha256 != cfg["weights"].get("sha256"):
        raise UserError(f"--weights {cfg['weights']['spec']}: the file changed since featurize used it "
                        f"(sha256 {cfg['weights']['sha256'][:12]}...); rerun `newsdl featurize --force`")
    from newsdl.features import images as img

    policy = _device(gpu)
    ext = img.build_extractor(bb, weights, layer=cfg["layer"], size=cfg["image_size"], policy=policy)
    return img.ImageFeaturizer(ext, batch_size or (fd.IMAGE_BATCH_GPU if policy else fd.IMAGE_BATCH_CPU))
