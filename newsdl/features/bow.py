"""The TF-IDF bag of words: word 1-2 grams of the suite's tokens, fitted on a task's training
articles (so it is saved with the model, as bow.json, not by the featurize stage), and the dense
top-terms layout the models read it in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from newsdl import defaults as td


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
