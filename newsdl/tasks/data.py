"""From the workspace's Parquet files to the model's inputs, and from those to tf.data.

Everything a task reads is loaded once into numpy arrays, aligned on the ingested articles:
at BreakingNews size (100k articles) that is ~0.5 GB of text features plus the image features.
The tf.data pipeline then only shuffles indices and gathers whole batches, one vectorised op
per array, which keeps the input pipeline a small share of each training step.

The inputs that are fitted (the TF-IDF vocabulary, on train only) or looked up (the gazetteer)
are computed here too, by the same functions for train, evaluate and predict.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from newsdl.errors import UserError
from newsdl import defaults as td

log = logging.getLogger("newsdl.tasks")

# Token ids in features/text.parquet: 0 pads, 1 is a word outside the vocabulary, and id k >= 2 is
# row k - 2 of word2vec.kv (see embedding_matrix).
PAD_ID, OOV_ID, FIRST_WORD_ID = 0, 1, 2
_LAST: dict = {}  # the corpus load_corpus read last, with its key


@dataclass
class Corpus:
    """Articles with their labels and the workspace's features, row-aligned."""

    ids: np.ndarray  # str
    split: np.ndarray  # "train" | "val" | "test"
    texts: list[str]  # title + body, what every text feature is made from
    # Every other field of the articles (source, lat, lon, comments, shares, published, ...), read as
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


def article_texts(titles, bodies) -> list[str]:
    from newsdl.features.tokenize import article_text

    return [article_text(t, b) for t, b in zip(titles, bodies)]


def corpus_from_articles(table) -> Corpus:
    """A Corpus from an ingest-shaped articles table (pyarrow), without feature arrays yet."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def col(name):
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            return pc.cast(column, "float64").to_numpy(zero_copy_only=False).astype(float)
        return np.asarray(column.to_pylist(), dtype=object)

    split = col("split")
    split[split == None] = "test"  # noqa: E711
    labels = {name: col(name) for name in table.column_names
              if name not in ("id", "split", "title", "text") and not pa.types.is_list(table.schema.field(name).type)}
    return Corpus(col("id").astype(str), split.astype(str), article_texts(col("title"), col("text")), labels,
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
            corpus.arrays.update(_text_arrays(text_path, corpus.ids))
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


def positions_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each ``wanted`` id in ``ids`` (-1 where absent)."""
    order = np.argsort(ids)
    found = np.searchsorted(ids, wanted, sorter=order)
    found = np.clip(found, 0, len(ids) - 1)
    rows = order[found]
    return np.where(ids[rows] == wanted, rows, -1)


def column_matrix(column) -> np.ndarray:
    """A fixed-size-list (or list) column of floats as an [n, d] float32 matrix; nulls are zeros."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    n = len(column)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    if column.null_count:
        width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
        if width is None:
            width = max((len(v) for v in column.to_pylist() if v is not None), default=0)
        column = pc.fill_null(column, pa.scalar([0.0] * width, column.type))
    if pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.astype(np.float32, copy=False).reshape(n, column.type.list_size)
    return np.asarray(column.to_pylist(), dtype=np.float32)


def _text_arrays(path: Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    columns = [c for c in ("article_id", "w2v_mean", "w2v_max", "tokens") if c in schema.names]
    if "article_id" not in columns:
        raise UserError(f"{path}: field 'article_id' is missing; rerun `newsdl featurize --force`")
    table = pq.read_table(path, columns=columns)
    rows = positions_of(ids, table.column("article_id").to_numpy(zero_copy_only=False).astype(str))
    keep = rows >= 0
    out = {}
    for name in ("w2v_mean", "w2v_max"):
        if name in columns:
            m = column_matrix(table.column(name))
            full = np.zeros((len(ids), m.shape[1]), np.float32)
            full[rows[keep]] = m[keep]
            out[name] = full
    if "tokens" in columns:
        out["tokens"] = _pad_tokens(table.column("tokens"), rows, len(ids))
    return out


def _pad_tokens(column, rows: np.ndarray, n: int, length: int = td.CNN_TOKENS) -> np.ndarray:
    """The first ``length`` token ids of each article, right-padded with PAD_ID, vectorised."""
    import pyarrow as pa

    column = column.combine_chunks()
    if pa.types.is_large_list(column.type):
        column = column.cast(pa.list_(pa.int32()))
    out = np.full((n, length), PAD_ID, np.int32)
    if len(column) == 0:
        return out
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False).astype(np.int32)
    starts, lens = offsets[:-1], np.minimum(np.diff(offsets), length)
    valid = (rows >= 0) & np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    pos = np.arange(length)
    take = (pos[None, :] < lens[:, None]) & valid[:, None]
    src = np.where(take, starts[:, None] + pos[None, :], 0)
    block = np.where(take, values[src] if len(values) else 0, PAD_ID)
    out[rows[valid]] = block[valid]
    return out


def read_fc7(parts: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_id, article_id, [n, d] FC7) of every featurized image in the features' parts."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids, articles, vecs = [], [], []
    for part in parts:
        table = pq.read_table(part, columns=["image_id", "article_id", "fc7"])
        table = table.filter(pc.is_valid(table.column("fc7")))
        if table.num_rows == 0:
            continue
        vecs.append(column_matrix(table.column("fc7")))
        if vecs[-1].shape[1] != vecs[0].shape[1]:
            raise UserError(f"{part}: field 'fc7' has {vecs[-1].shape[1]} values, other parts {vecs[0].shape[1]}; "
                            f"rerun `newsdl featurize --force`")
        ids.append(table.column("image_id").to_numpy(zero_copy_only=False).astype(str))
        articles.append(table.column("article_id").to_numpy(zero_copy_only=False).astype(str))
    if not vecs:
        return np.zeros(0, str), np.zeros(0, str), np.zeros((0, 0), np.float32)
    return np.concatenate(ids), np.concatenate(articles), np.vstack(vecs).astype(np.float32)


def pool(rows: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of ``values`` per row in [0, n) (an article's images' FC7), and a mask [n, 1]: 1
    where a row has any (an article without images gets zeros, not made-up features)."""
    sums = np.zeros((n, values.shape[1]), np.float32)
    counts = np.zeros(n, np.float32)
    np.add.at(sums, rows, values)
    np.add.at(counts, rows, 1.0)
    return sums / np.maximum(counts, 1.0)[:, None], (counts > 0).astype(np.float32)[:, None]


# ------------------------------------------------------------------ features fitted on train

def words(corpus: Corpus) -> list[list[str]]:
    """Each article's tokens (the suite's tokenizer), computed once per corpus: the bag of words,
    its baselines and evaluate all read them."""
    if corpus.words is None:
        from newsdl.features.tokenize import tokenize

        corpus.words = [tokenize(t) for t in corpus.texts]
    return corpus.words


def grams(tokens: list[str]) -> list[str]:
    """Word 1-grams and 2-grams (defaults.BOW_NGRAMS) of a token list."""
    lo, hi = td.BOW_NGRAMS
    out = list(tokens) if lo <= 1 else []
    for n in range(max(lo, 2), hi + 1):
        out += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return out


def bow_vectorizer(vocabulary: dict[str, int] | None = None, idf: np.ndarray | None = None):
    """TF-IDF over the suite's tokens: word 1-2 grams, sublinear tf, l2-normalised rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer=grams, min_df=td.BOW_MIN_DF, max_features=td.BOW_VOCAB,
                          sublinear_tf=True, dtype=np.float32, vocabulary=vocabulary)
    if idf is not None:
        vec.idf_ = np.asarray(idf, np.float64)
    return vec


def fit_bow(token_lists: list[list[str]]):
    vec = bow_vectorizer()
    try:
        vec.fit(token_lists)
    except ValueError:  # too few training articles for min_df: keep every term
        vec.set_params(min_df=1).fit(token_lists)
    return vec


def save_bow(vec, path: Path) -> None:
    from newsdl.workspace import write_json

    vocab = sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])
    write_json(path, {"terms": [t for t, _ in vocab], "idf": [round(float(x), 6) for x in vec.idf_],
                      "ngram_range": list(td.BOW_NGRAMS), "sublinear_tf": True})


def load_bow(path: Path):
    data = json.loads(path.read_text(encoding="utf-8"))
    return bow_vectorizer({t: i for i, t in enumerate(data["terms"])}, np.asarray(data["idf"]))


def bow_arrays(matrix, terms: int = td.BOW_TERMS) -> dict[str, np.ndarray]:
    """Each article's TF-IDF row (CSR) as its ``terms`` highest-weighted (id + 1, weight) pairs:
    a dense [n, terms] layout the model turns into a weighted bag of term embeddings, which is
    a dense layer over the sparse TF-IDF vector without ever materialising it."""
    matrix = matrix.tocsr()
    n = matrix.shape[0]
    ids = np.zeros((n, terms), np.int32)
    weights = np.zeros((n, terms), np.float32)
    for row in range(n):
        lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
        cols, vals = matrix.indices[lo:hi], matrix.data[lo:hi]
        if len(vals) > terms:
            top = np.argpartition(-vals, terms - 1)[:terms]
            cols, vals = cols[top], vals[top]
        ids[row, :len(cols)] = cols + 1
        weights[row, :len(vals)] = vals
    return {"bow_ids": ids, "bow_w": weights}


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
    out = np.zeros((len(vectors) + FIRST_WORD_ID, td.EMBED_DIM), np.float32)
    out[FIRST_WORD_ID:, :dim] = projected
    return out


# ------------------------------------------------------------------ tf.data

def dataset(inputs: dict[str, np.ndarray], targets, rows: np.ndarray, batch_size: int, *,
            seed: int | None = None, sample_weight: np.ndarray | None = None, epochs: tuple[int, int] | None = None):
    """A tf.data pipeline over ``rows`` of in-memory arrays.

    With ``seed``, batches are shuffled, with one permutation per epoch drawn from (seed, epoch),
    and the dataset spans ``epochs`` = (first, last) so that a resumed run sees exactly the
    batches an uninterrupted one would have. Without it, rows stay in order (val, test).
    Every array is a tf constant; a batch is one gather per array.
    """
    import tensorflow as tf

    rows = np.asarray(rows, np.int64)
    n = len(rows)
    x = {k: tf.constant(v[rows]) for k, v in inputs.items()}
    y = tf.nest.map_structure(lambda a: tf.constant(a[rows]), targets)
    w = tf.constant(sample_weight[rows]) if sample_weight is not None else None

    def gather(idx):
        bx = {k: tf.gather(v, idx) for k, v in x.items()}
        by = tf.nest.map_structure(lambda t: tf.gather(t, idx), y)
        return (bx, by, tf.gather(w, idx)) if w is not None else (bx, by)

    if seed is None:
        ds = tf.data.Dataset.range(n).batch(batch_size)
    else:
        first, last = epochs or (0, 1)

        def one_epoch(epoch):
            return tf.data.Dataset.range(n).shuffle(n, seed=seed * 100_003 + epoch,
                                                    reshuffle_each_iteration=False).batch(batch_size)

        ds = tf.data.Dataset.range(first, last).flat_map(one_epoch)
    # One gather per array and batch is cheap enough for a sequential map; prefetch overlaps it
    # with the training step.
    ds = ds.map(gather)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
