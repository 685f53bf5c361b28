"""What a newsroom knows about a story before it is published, as model inputs (popularity).

- the outlet (field ``source``; on Hacker News the linked domain, absent for self-posts): one id
  per outlet with at least PREPUB_OUTLET_MIN training articles, one for every rarer outlet and
  one for "no outlet";
- the publication hour and weekday (field ``published``, UTC as ingest stores it): one id each,
  plus one for "unknown" (missing, or a date without a time);
- the length of the headline (characters, words) and of the article (words), log1p, standardised
  with the training rows' statistics;
- the headline's character 2-5-grams (TF-IDF within word boundaries, fitted on train): on short
  texts they catch what word tokens miss (prefixes such as "Show HN", numbers, casing of names,
  morphology of words seen once).

Every input is an id or a small float vector, so the model's wide path reads each one through a
layer whose weights map one to one onto the columns of a sparse matrix (``wide_blocks``): a
closed-form ridge on those matrices sets them (baselines.fit_wide_ridge).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from pathlib import Path

import numpy as np

from newsdl import defaults as td

UNKNOWN_HOUR, UNKNOWN_WEEKDAY = 24, 7  # the ids of "not known": one past the last real value
OTHER_OUTLET, NO_OUTLET = 0, 1  # outlet ids below the vocabulary's (which start at 2)
HEADLINE_CHARS_FILE = "headline_chars.json"
LENGTHS = ("headline_chars", "headline_words", "article_words")


# ------------------------------------------------------------------ time

def hour_and_weekday(value) -> tuple[int, int]:
    """(hour 0-23 or UNKNOWN_HOUR, weekday 0-6 (Monday 0) or UNKNOWN_WEEKDAY) of a publication
    time: a datetime (ingest's UTC timestamps), an ISO-8601 string, or None.

    A date without a time gives its weekday only. Ingest stores a date-only value as midnight UTC,
    so a time of exactly 00:00:00.000 counts as "date only" too: a story really published at that
    millisecond loses only its hour."""
    if value is None:
        return UNKNOWN_HOUR, UNKNOWN_WEEKDAY
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return UNKNOWN_HOUR, UNKNOWN_WEEKDAY
        try:
            if len(text) <= 10:  # YYYY-MM-DD
                return UNKNOWN_HOUR, _dt.date.fromisoformat(text).weekday()
            value = _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
        except ValueError:
            return UNKNOWN_HOUR, UNKNOWN_WEEKDAY
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc)
        if value.time() == _dt.time(0):
            return UNKNOWN_HOUR, value.weekday()
        return value.hour, value.weekday()
    if isinstance(value, _dt.date):
        return UNKNOWN_HOUR, value.weekday()
    return UNKNOWN_HOUR, UNKNOWN_WEEKDAY


# ------------------------------------------------------------------ outlet

def outlet_key(value) -> str | None:
    """An outlet as compared: trimmed, lower case; None when absent."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    key = str(value).strip().lower()
    return key or None


def fit_outlets(sources, min_articles: int = td.PREPUB_OUTLET_MIN) -> list[str]:
    """The outlets with at least ``min_articles`` training articles, most frequent first (ties by
    name, so the same train rows always give the same ids)."""
    counts = Counter(k for k in map(outlet_key, sources) if k is not None)
    return sorted((k for k, n in counts.items() if n >= min_articles), key=lambda k: (-counts[k], k))


def outlet_ids(sources, outlets: list[str]) -> np.ndarray:
    """Each article's outlet id: 2 + its place in ``outlets``, OTHER_OUTLET or NO_OUTLET."""
    index = {k: i + 2 for i, k in enumerate(outlets)}
    keys = map(outlet_key, sources)
    return np.array([NO_OUTLET if k is None else index.get(k, OTHER_OUTLET) for k in keys], np.int32)


# ------------------------------------------------------------------ text

def headlines(corpus) -> list[str]:
    """Each article's headline: its title, else (a corpus without titles) the start of its text,
    which is where a headline's words would be."""
    titles = corpus.labels.get("title")
    out = []
    for i, text in enumerate(corpus.texts):
        title = None if titles is None else titles[i]
        out.append(str(title).strip() if title else text[:td.PREPUB_HEADLINE_FALLBACK_CHARS].strip())
    return out


def raw_lengths(corpus) -> np.ndarray:
    """[n, 3] log1p of the headline's characters and words and the article's words."""
    heads = headlines(corpus)
    return np.log1p(np.array([[len(h), len(h.split()), len(t.split())] for h, t in zip(heads, corpus.texts)],
                             np.float64).reshape(len(heads), len(LENGTHS)))


def char_vectorizer(vocabulary: dict[str, int] | None = None, idf: np.ndarray | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=td.PREPUB_CHAR_NGRAMS, min_df=td.BOW_MIN_DF,
                          max_features=td.PREPUB_CHAR_VOCAB, sublinear_tf=True, dtype=np.float32,
                          vocabulary=vocabulary)
    if idf is not None:
        vec.idf_ = np.asarray(idf, np.float64)
    return vec


def fit_chars(texts: list[str]):
    vec = char_vectorizer()
    try:
        vec.fit(texts)
    except ValueError:  # too few training headlines for min_df: keep every n-gram
        vec.set_params(min_df=1).fit(texts)
    return vec


def save_chars(vec, path: Path) -> None:
    from newsdl.workspace import write_json

    vocab = sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])
    write_json(path, {"terms": [t for t, _ in vocab], "idf": [round(float(x), 6) for x in vec.idf_],
                      "analyzer": "char_wb", "ngram_range": list(td.PREPUB_CHAR_NGRAMS), "sublinear_tf": True})


def load_chars(path: Path):
    data = json.loads(path.read_text(encoding="utf-8"))
    return char_vectorizer({t: i for i, t in enumerate(data["terms"])}, np.asarray(data["idf"]))


# ------------------------------------------------------------------ fit on train, inputs for all

def fit(corpus, train_rows: np.ndarray) -> tuple[dict, object]:
    """(the JSON-able part: outlets, length statistics; the headline n-gram vectorizer)."""
    sources = corpus.labels.get("source")
    outlets = fit_outlets([] if sources is None else sources[train_rows])
    lengths = raw_lengths(corpus.take(train_rows))
    mean = lengths.mean(axis=0) if len(lengths) else np.zeros(len(LENGTHS))
    std = np.maximum(lengths.std(axis=0), 1e-3) if len(lengths) else np.ones(len(LENGTHS))
    heads = headlines(corpus)
    return ({"outlets": outlets, "length_mean": [float(v) for v in mean], "length_std": [float(v) for v in std]},
            fit_chars([heads[i] for i in train_rows]))


def inputs(corpus, fitted: dict) -> dict[str, np.ndarray]:
    """The model's pre-publication inputs for every article of ``corpus``."""
    from newsdl.features.bow import bow_arrays

    n = len(corpus)
    sources = corpus.labels.get("source")
    published = corpus.labels.get("published")
    times = np.array([hour_and_weekday(None if published is None else published[i]) for i in range(n)],
                     np.int32).reshape(n, 2)
    lengths = (raw_lengths(corpus) - np.asarray(fitted["length_mean"])) / np.asarray(fitted["length_std"])
    chars = bow_arrays(fitted["headline_chars"].transform(headlines(corpus)), td.PREPUB_CHAR_TERMS)
    return {"outlet": outlet_ids([None] * n if sources is None else sources, fitted["outlets"])[:, None],
            "hour": times[:, :1], "weekday": times[:, 1:],
            "lengths": lengths.astype(np.float32),
            "char_ids": chars["bow_ids"], "char_w": chars["bow_w"]}


def vocab_sizes(fitted: dict) -> dict[str, int]:
    """Rows of each id input's table (the char ids count from 1; 0 pads)."""
    return {"outlet": len(fitted["outlets"]) + 2, "hour": UNKNOWN_HOUR + 1, "weekday": UNKNOWN_WEEKDAY + 1,
            "char_ids": len(fitted["headline_chars"].vocabulary_) + 1}


def wide_blocks(x: dict, fitted: dict) -> dict:
    """The pre-publication inputs as sparse matrices whose columns are the weights of the wide
    layers that read them: one-hot ids (embedding rows), the headline's n-gram TF-IDF (embedding
    rows, row 0 the padding), the standardised lengths (dense kernel rows)."""
    from scipy import sparse

    sizes = vocab_sizes(fitted)
    n = len(x["outlet"])
    out = {}
    for name in ("outlet", "hour", "weekday"):
        out[name] = sparse.csr_matrix((np.ones(n), (np.arange(n), x[name][:, 0])), shape=(n, sizes[name]))
    ids, w = x["char_ids"], x["char_w"]
    rows = np.repeat(np.arange(n), ids.shape[1])
    bag = sparse.csr_matrix((w.ravel().astype(np.float64), (rows, ids.ravel())), shape=(n, sizes["char_ids"]))
    bag.eliminate_zeros()
    out["char_ids"] = bag
    out["lengths"] = sparse.csr_matrix(x["lengths"].astype(np.float64))
    return out
