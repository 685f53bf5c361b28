"""From the workspace's Parquet files to the model's inputs, and from those to tf.data.

Everything a task reads is loaded once into numpy arrays, aligned on the ingested articles:
at BreakingNews size (100k articles) that is ~0.5 GB of text features plus the image features.
The tf.data pipeline then only shuffles indices and gathers whole batches, one vectorised op
per array, which keeps the input pipeline a small share of each training step.

The TF-IDF vocabulary, fitted on train only, is made here too, by the same functions for train,
evaluate and predict.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from newsdl import defaults as td
from newsdl.errors import UserError
from newsdl.features.shards import positions_of, read_fc7
from newsdl.features.text import OFFSET, read_text_arrays

log = logging.getLogger("newsdl.tasks")

_LAST: dict = {}  # the corpus load_corpus read last, with its key


@dataclass
class Corpus:
    """Articles with their labels and the workspace's features, row-aligned."""

    ids: np.ndarray  # str
    split: np.ndarray  # "train" | "val" | "test"
    texts: list[str]  # title + body, what every text feature is made from
    # Every other field of the articles (title, source, lat, lon, comments, shares, published, ...), read as
    # corpus.NAME: numbers as float64 (NaN when unknown), the rest as objects (None when unknown).
    # A task finds its labels here, whichever fields they are.
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # w2v_mean, w2v_max, tokens, fc7, fc7_mask
    available: tuple[str, ...] = ()  # feature families this corpus can provide
    words: list[list[str]] | None = None  # tokens of each text, once computed (see words())
    cache: dict = field(default_factory=dict)  # matrices computed from this corpus (TF-IDF)

    def __len__(self) -> int:
        return len(self.ids)

    def __getattr__(self, name: str) -> np.ndarray:
        labels = self.__dict__.get("labels", {})
        if name in labels:
            return labels[name]
        raise AttributeError(f"the articles have no field {name!r}")

    def take(self, rows: np.ndarray) -> "Corpus":
        return Corpus(self.ids[rows], self.split[rows], [self.texts[i] for i in rows],
                      {k: v[rows] for k, v in self.labels.items()}, {k: v[rows] for k, v in self.arrays.items()},
                      self.available, None if self.words is None else [self.words[i] for i in rows])


def corpus_from_articles(table) -> Corpus:
    """A Corpus from an ingest-shaped articles table (pyarrow), without feature arrays yet."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from newsdl.features.tokenize import article_text

    def col(name):
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            return pc.cast(column, "float64").to_numpy(zero_copy_only=False).astype(float)
        return np.asarray(column.to_pylist(), dtype=object)

    split = col("split")
    split[split == None] = "test"  # noqa: E711
    labels = {name: col(name) for name in table.column_names
              if name not in ("id", "split", "text") and not pa.types.is_list(table.schema.field(name).type)}
    texts = [article_text(t, b) for t, b in zip(col("title"), col("text"))]  # what every text feature reads
    return Corpus(col("id").astype(str), split.astype(str), texts, labels,
                  {}, ("bow", "gaz"))


def stage_digest(manifest: dict) -> str:
    """A digest of what a finished stage produced: its manifest's outputs (name, hash, size)."""
    import hashlib

    outputs = {name: {k: meta.get(k) for k in ("sha256", "bytes")} if isinstance(meta, dict) else meta
               for name, meta in (manifest.get("outputs") or {}).items()}
    body = json.dumps({"stage": manifest.get("stage"), "outputs": outputs,
                       "config": manifest.get("config")}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def upstream(ws: Path) -> list[dict]:
    """The inputs of a train run, as manifest entries: the ingest and features stages."""
    from newsdl.workspace import read_manifest

    entries = []
    for stage in ("ingest", "features"):
        manifest = read_manifest(ws / stage)
        if manifest is not None:
            entries.append({"path": str(ws / stage / "manifest.json"), "sha256": stage_digest(manifest)})
    return entries


def check_model(ws: Path, folder: Path, task: str) -> dict:
    """The manifest of a trained model that is still what train wrote, trained on the workspace's
    current ingest and features; a model made from other data is refused, never used silently."""
    from newsdl import workspace

    manifest = workspace.require_stage(folder, f"run `newsdl train {task} -w {ws}` first")
    if workspace.input_hashes(manifest) != [i["sha256"] for i in upstream(ws)]:
        raise UserError(f"{folder} is stale: {ws / 'ingest'} or {ws / 'features'} changed after this {task} model "
                        f"was trained; rerun `newsdl train {task} -w {ws}`")
    return manifest


def _fresh_features(ws: Path, ingest: dict) -> dict | None:
    """The features stage's manifest when it finished, checked against the current ingest output
    (``ingest``: its manifest)."""
    from newsdl import workspace

    folder = ws / "features"
    if not (folder / "manifest.json").exists():
        return None
    manifest = workspace.require_stage(folder, "run `newsdl featurize` first")
    current = [{"path": f"ingest/{name}", "sha256": meta.get("sha256")}
               for name, meta in (ingest.get("outputs") or {}).items() if isinstance(meta, dict)]
    workspace.check_inputs_current(folder, manifest, current, f"{ws / 'ingest'}")
    return manifest


def load_corpus(ws: Path) -> Corpus:
    """Articles of ``ws/ingest`` joined with what ``ws/features`` has for them (refused when either
    stage is damaged, or the features were made from another ingest output)."""
    import pyarrow.parquet as pq

    from newsdl import workspace

    ingest = workspace.require_stage(ws / "ingest", f"run `newsdl ingest INPUT -w {ws}` first")
    fresh = _fresh_features(ws, ingest)
    # Settings, training and evaluation of one process read the same corpus: read it once.
    key = (str(Path(ws).resolve()), stage_digest(ingest), fresh and stage_digest(fresh))
    if _LAST.get("key") == key:
        return _LAST["corpus"]
    articles_path = ws / "ingest" / "articles.parquet"
    scalar = [f.name for f in pq.read_schema(articles_path) if not str(f.type).startswith("list")]
    table = pq.read_table(articles_path, columns=scalar)
    corpus = corpus_from_articles(table)
    features = ws / "features"
    available = ["bow", "gaz"]
    if fresh is not None:
        text_path = features / "text.parquet"
        if text_path.is_file():
            corpus.arrays.update(read_text_arrays(text_path, corpus.ids))
            available += [f for f in ("w2v_mean", "w2v_max") if f in corpus.arrays]
            if "tokens" in corpus.arrays and (features / "word2vec.kv").is_file():
                available.append("tokens")
        _, owner, fc7 = read_fc7(sorted((features / "images").glob("part-*.parquet")))
        rows = positions_of(corpus.ids, owner)
        if (rows >= 0).any():
            corpus.arrays["fc7"], corpus.arrays["fc7_mask"] = pool(rows[rows >= 0], fc7[rows >= 0], len(corpus))
            available.append("fc7")
    corpus.available = tuple(f for f in td.FEATURES if f in available)
    _LAST.update(key=key, corpus=corpus)
    return corpus


def floored_variance(var: np.ndarray) -> np.ndarray:
    """Per-column variances for standardising, floored at 1e-4 x the columns' median: a column
    almost constant on train (a word-vector dimension that no training article moves) would
    otherwise scale a small shift on new articles into hundreds of standard deviations."""
    var = np.asarray(var, np.float64)
    return np.maximum(var, max(1e-4 * float(np.median(var)) if var.size else 0.0, 1e-12))


def pool(rows: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of ``values`` per row in [0, n) (an article's images' FC7), and a mask [n, 1]: 1
    where a row has any (an article without images gets zeros, not made-up features)."""
    sums = np.zeros((n, values.shape[1]), np.float32)
    counts = np.zeros(n, np.float32)
    np.add.at(sums, rows, values)
    np.add.at(counts, rows, 1.0)
    return sums / np.maximum(counts, 1.0)[:, None], (counts > 0).astype(np.float32)[:, None]


# ------------------------------------------------------------------ tokens

def words(corpus: Corpus) -> list[list[str]]:
    """Each article's tokens (the suite's tokenizer), computed once per corpus: the bag of words,
    its baselines and evaluate all read them."""
    if corpus.words is None:
        from newsdl.features.tokenize import tokenize

        corpus.words = [tokenize(t) for t in corpus.texts]
    return corpus.words


# ------------------------------------------------------------------ word vectors

def pca_axes(vectors: np.ndarray, dim: int, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, the first ``dim`` principal axes as rows) of word vectors, fitted on the first ``rows``
    of them (the most frequent words of a word2vec file) or on all: the one PCA that shrinks
    word2vec to a model's embedding size (the text CNN's, the caption decoder's)."""
    sample = np.asarray(vectors[:rows] if rows else vectors, np.float64)
    mean = sample.mean(axis=0)
    return mean, np.linalg.svd(sample - mean, full_matrices=False)[2][:dim]


def embedding_matrix(kv, dim: int = td.EMBED_DIM) -> np.ndarray:
    """Rows for every token id (PAD, OOV, then the word2vec rows), projected by PCA to ``dim``
    and scaled to unit average norm: word2vec's most informative directions at a CNN-friendly
    size. PAD is the zero vector; OOV is the mean word (the projection's origin)."""
    vectors = np.asarray(kv.vectors, np.float64)
    mean, axes = pca_axes(vectors, dim)
    projected = (vectors - mean) @ axes.T
    dim = projected.shape[1]
    projected /= max(np.linalg.norm(projected, axis=1).mean(), 1e-8)
    out = np.zeros((len(vectors) + OFFSET, td.EMBED_DIM), np.float32)
    out[OFFSET:, :dim] = projected
    return out


# ------------------------------------------------------------------ tf.data

def dataset(inputs: dict[str, np.ndarray], targets, rows: np.ndarray, batch_size: int, *,
            sample_weight: np.ndarray | None = None):
    """A tf.data pipeline over ``rows`` of in-memory arrays, in order (val, test, new articles;
    training batches are loop.shard_batches'). Every array is a tf constant; a batch is one
    gather per array, which a sequential map and prefetch keep off the step's critical path."""
    import tensorflow as tf

    rows = np.asarray(rows, np.int64)
    x = {k: tf.constant(v[rows]) for k, v in inputs.items()}
    y = tf.nest.map_structure(lambda a: tf.constant(a[rows]), targets)
    w = tf.constant(sample_weight[rows]) if sample_weight is not None else None

    def gather(idx):
        bx = {k: tf.gather(v, idx) for k, v in x.items()}
        by = tf.nest.map_structure(lambda t: tf.gather(t, idx), y)
        return (bx, by, tf.gather(w, idx)) if w is not None else (bx, by)

    options = tf.data.Options()
    options.deterministic = True
    ds = tf.data.Dataset.range(len(rows)).batch(batch_size).map(gather)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
