"""popularity's pre-publication inputs (tasks/prepub.py): publication time, outlet ids, lengths and
the headline's n-grams on hand-made records; the wide ridge over them; and the model that reads
them, trained, evaluated and used for predict."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from newsdl.tasks import prepub
from newsdl.tasks.data import Corpus

from test_tasks_support import FAST_TRAIN, copy_workspace, featurized_workspace  # noqa: F401

UTC = dt.timezone.utc


@pytest.mark.parametrize("value, expected", [
    (dt.datetime(2016, 8, 4, 11, 52, tzinfo=UTC), (11, 3)),  # a Thursday
    (dt.datetime(2016, 8, 4, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))), (4, 4)),  # UTC: Friday 04:30
    (dt.datetime(2016, 8, 4, 0, 0, tzinfo=UTC), (prepub.UNKNOWN_HOUR, 3)),  # ingest's date-only value
    (dt.datetime(2016, 8, 4, 0, 1, tzinfo=UTC), (0, 3)),  # just after midnight is a real time
    (dt.date(2016, 8, 7), (prepub.UNKNOWN_HOUR, 6)),
    ("2016-08-04T11:52", (11, 3)),
    ("2016-08-04T11:52:00Z", (11, 3)),
    ("2016-08-04T09:00:00+02:00", (7, 3)),
    ("2016-08-04", (prepub.UNKNOWN_HOUR, 3)),
    (None, (prepub.UNKNOWN_HOUR, prepub.UNKNOWN_WEEKDAY)),
    ("", (prepub.UNKNOWN_HOUR, prepub.UNKNOWN_WEEKDAY)),
    ("last Tuesday", (prepub.UNKNOWN_HOUR, prepub.UNKNOWN_WEEKDAY)),
])
def test_hour_and_weekday(value, expected):
    assert prepub.hour_and_weekday(value) == expected


def test_outlets_with_enough_training_articles_get_their_own_id():
    train = ["bbc.co.uk", "BBC.co.uk ", "bbc.co.uk", "github.com", "github.com", "github.com", "github.com",
             "rare.org", None, ""]
    outlets = prepub.fit_outlets(train, min_articles=3)
    assert outlets == ["github.com", "bbc.co.uk"]  # most frequent first; case and spaces do not count
    ids = prepub.outlet_ids(["github.com", " bbc.co.uk", "rare.org", "never-seen.net", None, ""], outlets)
    assert ids.tolist() == [2, 3, prepub.OTHER_OUTLET, prepub.OTHER_OUTLET, prepub.NO_OUTLET, prepub.NO_OUTLET]
    assert prepub.fit_outlets([None, None]) == []


def _corpus() -> Corpus:
    titles = ["Show HN: a tiny database", "Why the economy stalled", None, "Ask HN: what do you read?",
              "Markets rally after rate cut", "A storm hit Sydney"]
    bodies = ["", "The economy stalled in the third quarter, economists said.", "Floods in Kerala displaced thousands",
              "", "Stocks rose.", "Sydney was flooded overnight."]
    texts = [f"{t}\n{b}" if t else b for t, b in zip(titles, bodies)]
    labels = {"title": np.array(titles, object),
              "source": np.array([None, "ft.com", "bbc.co.uk", None, "ft.com", "bbc.co.uk"], object),
              "published": np.array([dt.datetime(2016, 8, 4, 11, 52, tzinfo=UTC), "2016-08-05", None,
                                     dt.datetime(2016, 8, 6, 0, 0, tzinfo=UTC), "2016-08-07T18:05:00Z",
                                     dt.datetime(2016, 8, 8, 7, 15, tzinfo=UTC)], object),
              "comments": np.array([12.0, 3.0, 40.0, 7.0, 1.0, 25.0])}
    return Corpus(np.array([f"a{i}" for i in range(6)]), np.array(["train"] * 4 + ["test"] * 2), texts, labels)


def test_inputs_fitted_on_train_apply_to_every_article():
    corpus = _corpus()
    train = np.arange(4)
    described, chars = prepub.fit(corpus, train)
    json.dumps(described)  # what goes to config.json
    fitted = {**described, "headline_chars": chars}
    x = prepub.inputs(corpus, fitted)
    n = len(corpus)
    assert {k: v.shape[0] for k, v in x.items()} == {k: n for k in x}
    assert x["hour"][:, 0].tolist() == [11, prepub.UNKNOWN_HOUR, prepub.UNKNOWN_HOUR, prepub.UNKNOWN_HOUR, 18, 7]
    assert x["weekday"][:, 0].tolist() == [3, 4, prepub.UNKNOWN_WEEKDAY, 5, 6, 0]
    # ft.com and bbc.co.uk have one training article each: below PREPUB_OUTLET_MIN, so "other".
    assert x["outlet"][:, 0].tolist() == [prepub.NO_OUTLET, prepub.OTHER_OUTLET, prepub.OTHER_OUTLET,
                                          prepub.NO_OUTLET, prepub.OTHER_OUTLET, prepub.OTHER_OUTLET]
    # Lengths: log1p counts, standardised on the training rows; the headline without a title is
    # the start of the text.
    assert x["lengths"].shape == (n, len(prepub.LENGTHS))
    assert x["lengths"][train].mean(axis=0) == pytest.approx(np.zeros(3), abs=1e-5)
    heads = prepub.headlines(corpus)
    assert heads[2] == "Floods in Kerala displaced thousands"
    raw = np.expm1(prepub.raw_lengths(corpus))
    assert raw[1].tolist() == pytest.approx([len("Why the economy stalled"), 4, 4 + 9])
    # Headline n-grams: ids into the vocabulary fitted on train (0 pads), TF-IDF weights.
    vocab = chars.vocabulary_
    assert "hn" in vocab and len(vocab) + 1 == prepub.vocab_sizes(fitted)["char_ids"]
    assert x["char_ids"].max() <= len(vocab) and np.all((x["char_ids"] == 0) == (x["char_w"] == 0))


def test_headline_ngrams_round_trip_through_json(tmp_path):
    corpus = _corpus()
    _, chars = prepub.fit(corpus, np.arange(4))
    prepub.save_chars(chars, tmp_path / prepub.HEADLINE_CHARS_FILE)
    again = prepub.load_chars(tmp_path / prepub.HEADLINE_CHARS_FILE)
    heads = prepub.headlines(corpus)
    assert np.allclose(chars.transform(heads).toarray(), again.transform(heads).toarray())


def test_wide_ridge_blocks_split_into_the_wide_layers_weights():
    """The ridge's coefficients, split per block and multiplied by the block's weight, reproduce
    its predictions when each block's weights read the block's raw (unweighted) columns."""
    from newsdl.tasks.baselines import fit_wide_ridge

    rng = np.random.default_rng(0)
    n = 200
    corpus = _corpus().take(rng.integers(0, 6, n))
    corpus.labels["source"] = np.array(rng.choice(["a", "b", "c", None], n), object)
    y = np.log1p(corpus.comments) + 0.5 * (corpus.source == "a") + rng.normal(0, 0.3, n)
    rows = {"train": np.arange(150), "val": np.arange(150, 200)}
    described, chars = prepub.fit(corpus, rows["train"])
    fitted = {**described, "headline_chars": chars}
    x = prepub.inputs(corpus, fitted)
    blocks = prepub.wide_blocks(x, fitted)
    init = fit_wide_ridge(x, [], rows, {"comments": y}, None, (0.1, 1.0, 10.0), blocks,
                                 [{"outlet": 1.0, "lengths": 0.5}, {"outlet": 3.0, "lengths": 1.5}])["comments"]
    assert set(init["blocks"]) == set(blocks)
    assert init["weights"]["outlet"] in (1.0, 3.0) and init["alpha"] in (0.1, 1.0, 10.0)
    linear = sum(blocks[name] @ init["blocks"][name][:, 0] for name in blocks) + init["bias"][0]
    from scipy import sparse
    from sklearn.linear_model import Ridge

    w = init["weights"]
    X = sparse.hstack([blocks[name] * w[name] for name in blocks], format="csr")
    ridge = Ridge(alpha=init["alpha"]).fit(X[rows["train"]], y[rows["train"]])
    assert np.asarray(linear).ravel() == pytest.approx(ridge.predict(X), abs=1e-4)
    assert init["blocks"]["outlet"][2 + described["outlets"].index("a"), 0] > 0.2  # the outlet that draws comments


@pytest.mark.slow
def test_prepublication_model_trains_and_predicts(featurized_workspace, sample_corpus, tmp_path):  # noqa: F811
    from newsdl.tasks import evaluate_task, get, predict_task, train_task
    from newsdl.tasks.articles import predict_outputs
    from newsdl.tasks.data import load_corpus
    from newsdl.tasks.task import read_saved

    ws = copy_workspace(featurized_workspace, tmp_path / "ws")
    train_task(ws, "popularity", **FAST_TRAIN)
    metrics = evaluate_task(ws, "popularity")
    assert np.isfinite(metrics["test"]["spearman"])
    folder = ws / "models" / "popularity"
    assert (folder / prepub.HEADLINE_CHARS_FILE).is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "headline_chars" not in config["fitted"] and config["fitted"]["headline_char_terms"] > 0
    assert config["fitted"]["wide_init"]["comments"]["alpha"] > 0

    task = get("popularity")
    saved = read_saved(ws, task)
    model = task.load_model(folder / "model.keras")
    assert {"outlet", "hour", "weekday", "lengths", "char_ids", "char_w"} <= set(model.input)
    # New articles through predict get the predictions the training corpus path gives them.
    records = [json.loads(line) for line in (sample_corpus / "articles.jsonl").read_text().splitlines()[:5]]
    records[1].pop("published")
    records[2]["source"] = "an-outlet-never-seen"
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = predict_task(ws, "popularity", path, out=tmp_path / "p.jsonl", images_root=sample_corpus)
    assert out["predicted"] == 5
    written = list(map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines()))
    predicted = {r["id"]: r["log1p_comments"] for r in written}
    # The count is the expected count (Duan's smearing factor, fitted on val): whole, never below 0.
    factor = config["fitted"]["calibration"]["comments_smearing"]
    keys = {"id"} | {k for name in config["fitted"]["targets"] for k in (name, f"log1p_{name}")}
    assert factor > 0 and all(set(r) == keys for r in written)
    assert all(r["comments"] == int(round(max(np.exp(r["log1p_comments"]) * factor - 1, 0))) for r in written)
    corpus = load_corpus(ws)
    x = task.inputs(corpus, saved.config["features"], saved.fitted)
    rows = np.array([list(corpus.ids).index(r["id"]) for r in records[:1] + records[3:]])
    expected = task.decode(predict_outputs(model, x, rows, 8), saved.fitted)["comments"]
    assert [predicted[r["id"]] for r in records[:1] + records[3:]] == pytest.approx(expected, abs=1e-3)
