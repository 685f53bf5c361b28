"""Text features: word2vec trained on the training split, streamed from Parquet, and the
per-article features of the BreakingNews release (mean and max of the word vectors, word ids)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from newsdl import defaults
from newsdl.errors import UserError
from newsdl import defaults as fd
from newsdl.features.shards import META_KEY, column_matrix, fixed_size_list, positions_of
from newsdl.features.tokenize import article_text, normalize, tokenize
from newsdl.progress import Progress
from newsdl.workspace import TMP_PREFIX, atomic_path

log = logging.getLogger(__name__)

# Ids in `tokens`: 0 pads, 1 is a word the vectors don't know, word i of word2vec.kv is i + 2.
PAD, OOV, OFFSET = 0, 1, 2
# gensim silently cuts "sentences" longer than this (its MAX_WORDS_IN_BATCH); the corpus cuts
# long articles into pieces instead, so no word is lost.
_MAX_SENTENCE = 10_000
_TOKENS_SCHEMA = pa.schema([("article_id", pa.string()), ("split", pa.string()),
                            ("words", pa.list_(pa.string()))])


@dataclass(frozen=True)
class Word2VecConfig:
    vector_size: int = fd.W2V_DIM
    window: int = fd.W2V_WINDOW
    min_count: int = fd.W2V_MIN_COUNT
    epochs: int = fd.W2V_EPOCHS
    skip_gram: bool = fd.W2V_SKIP_GRAM
    seed: int = defaults.SEED
    # One worker thread: gensim's threads take batches in whatever order the OS schedules them,
    # so only one thread gives the same vectors twice (gensim's FAQ; the hash is stable_hash).
    reproducible: bool = False


def stable_hash(text: str) -> int:
    """gensim's ``hashfxn``: Python's hash of a str changes with PYTHONHASHSEED from one process to
    the next, and gensim seeds per-word vectors with it; CRC-32 is the same everywhere."""
    return zlib.crc32(text.encode("utf-8"))


def estimate_train_words(articles: Path) -> int:
    """About the number of words word2vec trains on: runs of letters and digits in the title and
    text of the train split, counted by Arrow without tokenizing (seconds for a large corpus)."""
    total = 0
    for batch in pq.ParquetFile(articles).iter_batches(batch_size=fd.TEXT_BATCH_ROWS,
                                                       columns=["title", "text", "split"]):
        batch = batch.filter(pc.equal(batch.column("split"), "train"))
        for name in ("title", "text"):
            total += pc.sum(pc.count_substring_regex(batch.column(name), r"[\pL\pN]+")).as_py() or 0
    return total


def reproducible_mode(requested: bool | None, articles: Path | None) -> bool:
    """--reproducible/--no-reproducible as given; by default, reproducible for a corpus of at most
    defaults.W2V_REPRODUCIBLE_WORDS training words, where one thread costs little."""
    if requested is not None or articles is None:
        return bool(requested)
    return estimate_train_words(articles) <= fd.W2V_REPRODUCIBLE_WORDS


def available_cores() -> int:
    """The cores this process may use: a SLURM or cgroup allocation, not the node's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def token_cache(folder: Path) -> Iterator[Path]:
    """A temporary Parquet file of tokenised articles, removed afterwards (and, if the process is
    killed, by the next run's clean_temporaries)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd_, name = tempfile.mkstemp(prefix=TMP_PREFIX + "tokens.", suffix=".parquet", dir=folder)
    os.close(fd_)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def tokenize_articles(articles: Path, out: Path, stopwords: frozenset[str] | None) -> dict:
    """Tokenise every article once, into ``out``: word2vec's passes and the features then read
    words, not text, and the corpus is never in memory as a whole."""
    source = pq.ParquetFile(articles)
    n_articles = n_words = 0
    with pq.ParquetWriter(out, _TOKENS_SCHEMA) as writer, \
            Progress("tokenising", total=source.metadata.num_rows, unit="articles") as bar:
        for batch in source.iter_batches(batch_size=fd.TEXT_BATCH_ROWS, columns=["id", "title", "text", "split"]):
            cols = batch.to_pydict()
            words = [tokenize(article_text(title, body), stopwords) for title, body in zip(cols["title"], cols["text"])]
            writer.write_table(pa.table({"article_id": cols["id"], "split": cols["split"], "words": words},
                                        schema=_TOKENS_SCHEMA))
            n_articles += batch.num_rows
            n_words += sum(map(len, words))
            bar.update(batch.num_rows)
    return {"articles": n_articles, "words": n_words}


@dataclass
class ParquetCorpus:
    """gensim's corpus iterable over the token cache: restartable (every pass re-reads the file)
    and streaming (one batch of articles in memory), restricted to some splits."""

    path: Path
    splits: tuple[str, ...] | None = ("train",)

    def __iter__(self) -> Iterator[list[str]]:
        keep = pa.array(self.splits, pa.string()) if self.splits else None
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=fd.TEXT_BATCH_ROWS, columns=["split", "words"]):
            if keep is not None:
                batch = batch.filter(pc.is_in(batch.column("split"), value_set=keep))
            for words in batch.column("words").to_pylist():
                for start in range(0, len(words), _MAX_SENTENCE):
                    yield words[start:start + _MAX_SENTENCE]


def train_word2vec(corpus, cfg: Word2VecConfig, *, workers: int | None = None, source: str = "the corpus"):
    """Train on ``corpus`` (only what it yields: the training split); return (vectors, stats)."""
    from gensim.models import Word2Vec
    from gensim.models.callbacks import CallbackAny2Vec

    class _EpochTick(CallbackAny2Vec):
        def __init__(self, bar):
            self.bar = bar

        def on_epoch_end(self, model):
            self.bar.update()

    model = Word2Vec(vector_size=cfg.vector_size, window=cfg.window, min_count=cfg.min_count,
                     sg=int(cfg.skip_gram), seed=cfg.seed, epochs=cfg.epochs, hashfxn=stable_hash,
                     workers=1 if cfg.reproducible else workers or available_cores())
    model.build_vocab(corpus_iterable=corpus)
    if not model.wv.index_to_key:
        raise UserError(f"{source}: no word of the train split occurs {cfg.min_count} times; lower "
                        f"--min-count or add training articles")
    n, limit = model.corpus_total_words, fd.W2V_REPRODUCIBLE_WORDS
    if cfg.reproducible:
        log.info("word2vec: reproducible mode (1 worker thread), %s words %s %s", f"{n:,}",
                 "<=" if n <= limit else ">", f"{limit:,}")
    else:
        log.info("word2vec: %d worker threads, %s words %s %s: not bitwise reproducible (--reproducible: one "
                 "thread, identical vectors)", model.workers, f"{n:,}", ">" if n > limit else "<=", f"{limit:,}")
    start = time.monotonic()
    with Progress("word2vec", total=cfg.epochs, unit="epochs") as bar:
        _, raw_words = model.train(corpus_iterable=corpus, total_examples=model.corpus_count,
                                   total_words=model.corpus_total_words, epochs=cfg.epochs,
                                   callbacks=[_EpochTick(bar)])
    seconds = time.monotonic() - start
    stats = {"vocab": len(model.wv), "train_words": model.corpus_total_words, "seconds": round(seconds, 2),
             "words_per_s": round(raw_words / max(seconds, 1e-9)), "workers": model.workers,
             "reproducible": cfg.reproducible}
    log.info("word2vec: %d words x %d epochs in %.1f s (%s words/s), vocabulary %d",
             model.corpus_total_words, cfg.epochs, seconds, f"{stats['words_per_s']:,}", len(model.wv))
    return model.wv, stats


def corpus_vocabulary(cache: Path) -> set[str]:
    vocab: set[str] = set()
    for batch in pq.ParquetFile(cache).iter_batches(columns=["words"]):
        vocab.update(pc.unique(pc.list_flatten(batch.column("words"))).to_pylist())
    return vocab


def restrict_vectors(kv, vocab: set[str]):
    """Keep the pretrained words that this corpus uses, keyed the way the tokenizer writes them.

    A 3M-word GoogleNews matrix shrinks to the corpus's words: ids small enough for an embedding
    layer, a word2vec.kv small enough to copy around. When several keys normalise alike ("Obama",
    "obama"), the first wins: word2vec files list the frequent form first.
    """
    from gensim.models import KeyedVectors

    rows: dict[str, int] = {}
    for i, key in enumerate(kv.index_to_key):
        word = normalize(str(key))
        if word in vocab and word not in rows:
            rows[word] = i
    out = KeyedVectors(kv.vector_size, count=0)
    if rows:
        out.add_vectors(list(rows), np.asarray(kv.vectors[list(rows.values())], dtype=np.float32))
    log.info("pretrained vectors: %d of the corpus's %d distinct words are known", len(out), len(vocab))
    return out


def text_features(words_lists: Sequence[Sequence[str]], kv, max_tokens: int) -> dict[str, np.ndarray]:
    """Per article: mean and max of its known words' vectors (zeros when it has none, flagged by
    ``no_known_words``), its word ids padded or cut to ``max_tokens``, and its word counts."""
    n, dim = len(words_lists), kv.vector_size
    mean = np.zeros((n, dim), np.float32)
    peak = np.zeros((n, dim), np.float32)
    tokens = np.full((n, max_tokens), PAD, np.int32)
    n_words = np.zeros(n, np.int32)
    n_oov = np.zeros(n, np.int32)
    index, vectors = kv.key_to_index, kv.vectors
    for i, words in enumerate(words_lists):
        ids = np.fromiter((index.get(w, -1) for w in words), dtype=np.int64, count=len(words))
        known = ids[ids >= 0]
        n_words[i], n_oov[i] = len(ids), len(ids) - len(known)
        if len(known):
            rows = vectors[known]
            mean[i], peak[i] = rows.mean(axis=0), rows.max(axis=0)
        head = ids[:max_tokens]
        tokens[i, :len(head)] = np.where(head >= 0, head + OFFSET, OOV)
    return {"w2v_mean": mean, "w2v_max": peak, "tokens": tokens, "n_words": n_words, "n_oov": n_oov,
            "no_known_words": n_words == n_oov}


def features_table(article_ids: Sequence[str], feats: dict[str, np.ndarray]) -> pa.Table:
    tokens = feats["tokens"]
    offsets = np.arange(0, tokens.size + 1, tokens.shape[1], dtype=np.int32)
    return pa.table({
        "article_id": pa.array(article_ids, pa.string()),
        "w2v_mean": fixed_size_list(feats["w2v_mean"]),
        "w2v_max": fixed_size_list(feats["w2v_max"]),
        "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens.reshape(-1), pa.int32())),
        "n_words": pa.array(feats["n_words"], pa.int32()),
        "n_oov": pa.array(feats["n_oov"], pa.int32()),
        "no_known_words": pa.array(feats["no_known_words"], pa.bool_()),
    })


def write_text_features(cache: Path, kv, final: Path, max_tokens: int, meta: dict) -> dict:
    """Write text.parquet from the token cache, batch by batch, with ``meta`` and the OOV report
    in its footer; return the report."""
    source = pq.ParquetFile(cache)
    words = Counter()
    oov = Counter()
    empty = Counter()
    with atomic_path(final) as tmp, Progress("text features", total=source.metadata.num_rows, unit="articles") as bar:
        writer = None
        for batch in source.iter_batches(batch_size=fd.TEXT_BATCH_ROWS):
            cols = batch.to_pydict()
            feats = text_features(cols["words"], kv, max_tokens)
            table = features_table(cols["article_id"], feats)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            for split, n, k, none in zip(cols["split"], feats["n_words"], feats["n_oov"], feats["no_known_words"]):
                words[split] += int(n)
                oov[split] += int(k)
                empty[split] += int(none)
            bar.update(batch.num_rows)
        if writer is None:  # no article at all: still a valid, empty file
            writer = pq.ParquetWriter(tmp, features_table([], text_features([], kv, max_tokens)).schema)
        report = {
            "articles": source.metadata.num_rows, "words": sum(words.values()), "oov_words": sum(oov.values()),
            "oov_rate": round(sum(oov.values()) / max(sum(words.values()), 1), 4),
            "articles_no_known_words": sum(empty.values()), "vocab": len(kv),
            "oov_rate_by_split": {s: round(oov[s] / max(words[s], 1), 4) for s in sorted(words)},
        }
        writer.add_key_value_metadata({META_KEY: json.dumps({**meta, "counts": report}, sort_keys=True).encode()})
        writer.close()
    by_split = ", ".join(f"{s} {100 * r:.1f}%" for s, r in report["oov_rate_by_split"].items())
    log.info("text features: %d articles, %d words, %.1f%% out of vocabulary (%s), %d with no known word",
             report["articles"], report["words"], 100 * report["oov_rate"], by_split,
             report["articles_no_known_words"])
    return report


@dataclass
class TextFeaturizer:
    """Text features for new articles, exactly as featurize made them for the corpus."""

    kv: object  # gensim KeyedVectors
    max_tokens: int
    stopwords: frozenset[str] | None = None

    def tokenize(self, text: str | None, title: str | None = None) -> list[str]:
        return tokenize(article_text(title, text), self.stopwords)

    def __call__(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> dict[str, np.ndarray]:
        titles = titles if titles is not None else [None] * len(texts)
        return text_features([self.tokenize(t, h) for t, h in zip(texts, titles)], self.kv, self.max_tokens)

    def embedding_matrix(self) -> np.ndarray:
        """Rows for the `tokens` ids, for a Keras Embedding: zeros for padding and unknown words."""
        return np.vstack([np.zeros((OFFSET, self.kv.vector_size), np.float32),
                          np.asarray(self.kv.vectors, np.float32)])


def read_text_arrays(path: Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    """text.parquet's w2v_mean, w2v_max (zeros for an article it lacks) and tokens (the first
    CNN_TOKENS ids, padded), row-aligned on ``ids``."""
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


def _pad_tokens(column, rows: np.ndarray, n: int, length: int = fd.CNN_TOKENS) -> np.ndarray:
    """The first ``length`` token ids of each article, right-padded with PAD, vectorised."""
    column = column.combine_chunks()
    if pa.types.is_large_list(column.type):
        column = column.cast(pa.list_(pa.int32()))
    out = np.full((n, length), PAD, np.int32)
    if len(column) == 0:
        return out
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False).astype(np.int32)
    starts, lens = offsets[:-1], np.minimum(np.diff(offsets), length)
    valid = (rows >= 0) & np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    pos = np.arange(length)
    take = (pos[None, :] < lens[:, None]) & valid[:, None]
    src = np.where(take, starts[:, None] + pos[None, :], 0)
    block = np.where(take, values[src] if len(values) else 0, PAD)
    out[rows[valid]] = block[valid]
    return out
