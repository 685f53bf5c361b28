"""`newsdl predict`: new articles validated like ingest, featurized like the corpus, predicted."""

from __future__ import annotations

import json

import pytest

from test_tasks_support import featurized_workspace, run_newsdl, trained_workspace  # noqa: F401


def _good(sample_corpus, n=3):
    lines = (sample_corpus / "articles.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_predict_writes_predictions_and_rejects_bad_records(trained_workspace, sample_corpus, tmp_path):  # noqa: F811
    good = _good(sample_corpus)
    no_image = {"id": "new-1", "title": "Storm", "text": "A storm hit Sydney, Australia. Sydney was flooded."}
    missing_image = {**no_image, "id": "new-2", "images": [{"path": "images/nowhere.jpg"}]}
    bad = [{"id": "bad-1", "text": ""}, {"id": "bad-2", "text": "x", "geo": {"lat": 91, "lon": 0}}, "not json"]
    path = _write(tmp_path / "new.jsonl", good + [no_image, missing_image] + bad)
    for task, keys in (("geoloc", {"id", "lat", "lon", "place", "candidates", "expected_error_km"}),
                       ("source", {"id", "source", "probability", "probabilities"}),
                       ("popularity", {"id", "comments", "log1p_comments", "shares", "log1p_shares"})):
        out = tmp_path / f"{task}.jsonl"
        result = run_newsdl("predict", task, path, "-w", trained_workspace, "--out", out,
                            "--images-root", sample_corpus)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["id"] for r in rows] == [g["id"] for g in good] + ["new-1", "new-2"]
        assert all(set(r) == keys for r in rows), rows[0]
        rejected = [json.loads(line) for line in (tmp_path / f"{task}.jsonl.rejected.jsonl").read_text().splitlines()]
        by_reason = {(r.get("line"), r["field"], r["code"]) for r in rejected}
        assert {(6, "text", "empty_text"), (7, "lat", "geo_out_of_range"), (8, "", "unparsable"),
                (5, "images[0].path", "image_missing")} <= by_reason
        assert "rejected 3 records, 1 images" in result.stdout
    geo = [json.loads(line) for line in (tmp_path / "geoloc.jsonl").read_text().splitlines()]
    assert all(-90 <= r["lat"] <= 90 and -180 <= r["lon"] <= 180 for r in geo)
    source = [json.loads(line) for line in (tmp_path / "source.jsonl").read_text().splitlines()]
    assert all(r["probabilities"][r["source"]] == r["probability"] for r in source)
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3) for r in source)


def test_a_story_that_names_one_city_lands_on_it(trained_workspace, tmp_path):  # noqa: F811
    story = {"id": "paris", "title": "Talks end",
             "text": "Talks in Paris, France, ended on Friday. Officials in Paris said more would follow."}
    path = _write(tmp_path / "new.jsonl", [story])
    out = tmp_path / "p.jsonl"
    result = run_newsdl("predict", "geoloc", path, "-w", trained_workspace, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    # TensorFlow's notices stay hidden without --verbose.
    for noise in ("cuInit", "oneDNN", "cuda drivers", "retracing", "absl::InitializeLog"):
        assert noise not in result.stderr + result.stdout, noise
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    from newsdl.geo import gcd_km

    assert gcd_km(rec["lat"], rec["lon"], 48.8566, 2.3522) < 100
    assert (rec["place"]["name"], rec["place"]["country"]) == ("Paris", "FR") and rec["place"]["km"] < 100
    top = rec["candidates"][0]
    assert (top["name"], top["country"]) == ("Paris", "FR") and 0 < top["probability"] <= 1
    assert [c["probability"] for c in rec["candidates"]] == sorted((c["probability"] for c in rec["candidates"]),
                                                                    reverse=True)
    assert rec["expected_error_km"] >= 0


def test_predict_parquet_and_the_python_api(trained_workspace, sample_corpus, tmp_path):  # noqa: F811
    import pyarrow.parquet as pq

    from newsdl.tasks import predict_task

    path = _write(tmp_path / "new.jsonl", _good(sample_corpus, 4))
    result = predict_task(trained_workspace, "geoloc", path, out=tmp_path / "p.parquet", images_root=sample_corpus)
    assert result["predicted"] == 4 and result["rejected"] == 0 and result["rejected_file"] is None
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["id", "lat", "lon", "place", "candidates", "expected_error_km"]
    assert table.num_rows == 4
    # The same articles through the training corpus path get the same predictions: predict
    # featurizes new text exactly as featurize and training did.
    import numpy as np

    from newsdl.tasks import get
    from newsdl.tasks.articles import predict_outputs
    from newsdl.tasks.data import load_corpus
    from newsdl.tasks.task import read_saved

    task = get("geoloc")
    saved = read_saved(trained_workspace, task)
    corpus = load_corpus(trained_workspace)
    ids = table.column("id").to_pylist()
    rows = np.array([list(corpus.ids).index(i) for i in ids])
    x = task.inputs(corpus, saved.config["features"], saved.fitted)
    outputs = predict_outputs(task.load_model(saved.folder / "model.keras"), x, rows, 8)
    pred = task.decode(outputs, saved.fitted)
    assert pred["lat"] == pytest.approx(table.column("lat").to_numpy(), abs=1e-3)
    assert pred["lon"] == pytest.approx(table.column("lon").to_numpy(), abs=1e-3)


def test_predict_with_only_bad_records_exits_2_naming_the_line_and_field(trained_workspace, tmp_path):  # noqa: F811
    path = _write(tmp_path / "bad.jsonl", [{"id": "a", "text": "ok", "comments": -3}])
    result = run_newsdl("predict", "popularity", path, "-w", trained_workspace, "--out", tmp_path / "o.jsonl")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()
    assert len(line) == 1 and "bad.jsonl:line 1" in line[0] and "comments" in line[0]
    assert not (tmp_path / "o.jsonl").exists()
    for args, needle in ((["predict", "geoloc", tmp_path / "missing.jsonl"], "no such file"),
                         (["predict", "geoloc", path, "--out", tmp_path / "o.txt"], "--out"),
                         (["predict", "weather", path], "TASK 'weather'")):
        result = run_newsdl(*args, "-w", trained_workspace)
        assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr, args


def test_predict_to_stdout_and_to_csv(trained_workspace, sample_corpus, tmp_path):  # noqa: F811
    good = _good(sample_corpus, 3)
    path = _write(tmp_path / "new.jsonl", good + [{"id": "bad", "text": ""}])
    result = run_newsdl("predict", "source", path, "-w", trained_workspace, "--out", "-")
    assert result.returncode == 0, result.stderr[-3000:]
    # stdout holds the records and nothing else, for pipes; the summary and warnings go to stderr.
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == [g["id"] for g in good]
    assert "predict source: 3 articles -> -" in result.stderr and "rejected 1 records" in result.stderr
    rejected = trained_workspace / "models" / "source" / "predictions" / "new.jsonl.rejected.jsonl"
    assert json.loads(rejected.read_text().splitlines()[0])["id"] == "bad"

    import pandas as pd

    out = tmp_path / "p.csv"
    result = run_newsdl("predict", "geoloc", path, "-w", trained_workspace, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "lat", "lon", "place", "candidates", "expected_error_km"]
    assert list(table["id"]) == [g["id"] for g in good]
    assert {"name", "country", "km"} <= set(json.loads(table["place"][0]))  # nested values as JSON text

    result = run_newsdl("predict", "source", path, "-w", trained_workspace, "--out", tmp_path / "p.txt")
    assert result.returncode == 2 and "p.txt" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_illustrate_ranks_the_workspaces_images(trained_workspace, tmp_path):  # noqa: F811
    import pyarrow.parquet as pq

    from newsdl.errors import UserError
    from newsdl.tasks import predict_task

    story = {"id": "new", "title": "Storm", "text": "A storm crossed the coast; waves hit the harbour all night."}
    path = _write(tmp_path / "new.jsonl", [story, {**story, "id": "new-2", "text": "The team won the final."}])
    out = tmp_path / "ranked.jsonl"
    r = predict_task(trained_workspace, "illustrate", path, out=out, gallery="workspace")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert r["predicted"] == 2 and [x["id"] for x in rows] == ["new", "new-2"]
    images = pq.read_table(trained_workspace / "ingest" / "images.parquet").to_pylist()
    paths = {i["image_id"]: i["path"] for i in images}
    for row in rows:
        ranked = row["images"]
        assert len(ranked) == 10 and all(paths[i["image_id"]] == i["image"] for i in ranked)
        scores = [i["score"] for i in ranked]
        assert scores == sorted(scores, reverse=True)
    assert rows[0]["images"] != rows[1]["images"]  # the ranking reads the article
    with pytest.raises(UserError, match="--gallery"):
        predict_task(trained_workspace, "illustrate", path, out=out, gallery="web")
    with pytest.raises(UserError, match="gallery"):
        predict_task(trained_workspace, "source", path, out=out, gallery="workspace")
