"""Task heads: training and evaluation of every task, reruns, resume after a kill, determinism,
the missing-image mask, the custom layers, the gazetteer and the CLI's user errors."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from test_tasks_support import (FAST_TRAIN, copy_workspace, featurized_workspace, popen_newsdl,  # noqa: F401
                                rerecord, run_newsdl, trained_workspace)

BASELINES = {"geoloc": {"constant", "knn", "gazetteer"}, "source": {"majority", "tfidf_logreg"},
             "popularity": {"mean", "ridge"}}


def _weights(path):
    from newsdl.tasks.models import load

    return load(path).get_weights()


@pytest.mark.parametrize("task", ["geoloc", "source", "popularity"])
def test_each_task_trains_and_writes_complete_metrics(trained_workspace, task):  # noqa: F811
    from newsdl.tasks import metrics as M

    folder = trained_workspace / "models" / task
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["task"] == task
    assert isinstance(metrics["n_train"], int) and metrics["n_train"] > 0
    assert isinstance(metrics["n_test"], int) and metrics["n_test"] > 0
    assert list(metrics["test"]) == list(M.KEYS[task])
    assert set(metrics["baselines"]) == BASELINES[task]
    for name, scores in metrics["baselines"].items():
        assert list(scores) == list(M.KEYS[task]), name
        assert all(isinstance(v, float) and np.isfinite(v) for v in scores.values()), name
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics["test"].values())
    assert metrics["main_metric"] == M.MAIN[task][0]
    assert metrics["beats_every_baseline"] == all(M.beats(task, metrics["test"], b)
                                                  for b in metrics["baselines"].values())
    # The model, its config and history, plots and the manifest, written last.
    for name in ("model.keras", "config.json", "history.csv", "manifest.json"):
        assert (folder / name).is_file(), name
    plots = {"geoloc": ["error_cdf.png", "world.png"], "source": ["confusion.png"],
             "popularity": ["predicted_vs_true.png"]}[task]
    for plot in plots:
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two stages, two records: train's (the model) and evaluate's (metrics and plots, keyed by the
    # model's sha256).
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stage"] == "train" and "model.keras" in manifest["outputs"] and manifest["inputs"]
    assert "metrics.json" not in manifest["outputs"]
    record = json.loads((folder / "evaluate.json").read_text())
    assert record["stage"] == "evaluate" and {"metrics.json", *plots} == set(record["outputs"])
    assert record["config"]["model_sha256"] == manifest["outputs"]["model.keras"]["sha256"]
    assert record["inputs"] == manifest["inputs"]
    history = (folder / "history.csv").read_text().splitlines()
    assert 2 <= len(history) <= 1 + FAST_TRAIN["epochs"]
    config = json.loads((folder / "config.json").read_text())
    assert config["features"] and config["seed"] == FAST_TRAIN["seed"]
    if task == "geoloc":
        assert config["head"] in ("regress", "cells") and set(config["heads"]) == {"regress", "cells"}
        assert "gaz" in config["features"] and len(config["fitted"]["cells"]) >= 1
    if task == "source":
        assert config["fitted"]["classes"] == sorted(config["fitted"]["classes"])
        assert "fc7" in config["features"] and "tokens" in config["features"]
    assert not any(p.name.startswith(".tmp-") for p in folder.rglob("*"))


def test_models_load_in_safe_mode_and_reruns_are_no_ops(trained_workspace):  # noqa: F811
    import keras

    from newsdl.tasks import evaluate_task, train_task

    folder = trained_workspace / "models" / "source"
    model = keras.models.load_model(folder / "model.keras", safe_mode=True, compile=False)
    assert "source" in model.output_names
    before = (folder / "model.keras").stat().st_mtime_ns
    assert train_task(trained_workspace, "source", **FAST_TRAIN)["skipped"] is True
    assert (folder / "model.keras").stat().st_mtime_ns == before
    metrics_written = (folder / "metrics.json").stat().st_mtime_ns
    again = evaluate_task(trained_workspace, "source")
    assert again == json.loads((folder / "metrics.json").read_text())
    assert (folder / "metrics.json").stat().st_mtime_ns == metrics_written  # up to date: not recomputed


def test_same_seed_same_model_other_seed_other_model(featurized_workspace, tmp_path):  # noqa: F811
    from newsdl.tasks import train_task

    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        ws = copy_workspace(featurized_workspace, tmp_path / name)
        train_task(ws, "popularity", epochs=2, batch_size=16, seed=seed)
        runs[name] = ws / "models" / "popularity"
    a, b, c = (_weights(runs[n] / "model.keras") for n in "abc")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert (runs["a"] / "history.csv").read_text() == (runs["b"] / "history.csv").read_text()
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_a_killed_training_resumes_where_it_stopped(featurized_workspace, tmp_path):  # noqa: F811
    """Kill `newsdl train` after its second epoch; the rerun resumes at epoch 3 and ends with the
    very weights of a run that was never interrupted."""
    args = ["--epochs", "5", "--patience", "10", "--batch-size", "8", "--seed", "5"]
    killed = copy_workspace(featurized_workspace, tmp_path / "killed")
    whole = copy_workspace(featurized_workspace, tmp_path / "whole")
    meta = killed / "models" / "source" / "runs" / "default" / "backup" / "training_metadata.json"
    proc = popen_newsdl("train", "source", "-w", killed, *args)
    deadline = time.monotonic() + 300
    epoch = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            epoch = json.loads(meta.read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            epoch = 0
        if epoch >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"training ended before it could be killed: {proc.stdout.read()}"
    assert not (killed / "models" / "source" / "manifest.json").exists()

    resumed = run_newsdl("train", "source", "-w", killed, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {epoch}" in resumed.stderr
    assert f"epoch {epoch}/5:" not in resumed.stderr and "epoch 5/5:" in resumed.stderr
    history = (killed / "models" / "source" / "history.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in history[1:]] == [0, 1, 2, 3, 4]

    assert run_newsdl("train", "source", "-w", whole, *args).returncode == 0
    a = _weights(killed / "models" / "source" / "model.keras")
    b = _weights(whole / "models" / "source" / "model.keras")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_articles_without_images_are_masked_not_faked(featurized_workspace, tmp_path):  # noqa: F811
    """Drop the image features of some articles: they get mask 0, and the model's output for
    them does not depend on whatever sits in their fc7 slot."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from newsdl.tasks import train_task
    from newsdl.tasks.data import dataset, load_corpus
    from newsdl.tasks.models import load
    from newsdl.tasks.prepare import model_inputs, read_saved

    ws = copy_workspace(featurized_workspace, tmp_path / "ws")
    part = next((ws / "features" / "images").glob("part-*.parquet"))
    table = pq.read_table(part)
    articles = sorted(set(table.column("article_id").to_pylist()))
    no_image = set(articles[::3])
    pq.write_table(table.filter(pc.invert(pc.is_in(table.column("article_id"),
                                                   value_set=__import__("pyarrow").array(sorted(no_image))))), part)
    rerecord(ws / "features")

    corpus = load_corpus(ws)
    mask = corpus.arrays["fc7_mask"][:, 0]
    without = np.array([i in no_image for i in corpus.ids])
    assert without.any() and np.all(mask[without] == 0) and np.all(mask[~without] == 1)
    assert np.all(corpus.arrays["fc7"][without] == 0)

    train_task(ws, "source", **FAST_TRAIN)
    saved = read_saved(ws, "source")
    model = load(saved.folder / "model.keras")
    x = model_inputs(corpus, saved.features, saved.fitted)
    rows = np.arange(len(corpus))
    before = model.predict(dataset(x, {}, rows, 16), verbose=0)["source"]
    noisy = dict(x)
    noisy["fc7"] = x["fc7"] + np.where(without[:, None], 1e3 * np.random.default_rng(0).standard_normal(
        x["fc7"].shape), 0).astype(np.float32)
    after = model.predict(dataset(noisy, {}, rows, 16), verbose=0)["source"]
    np.testing.assert_allclose(after[without], before[without], atol=1e-6)
    # ...while the image branch is live for articles that have images.
    noisy["fc7"] = x["fc7"] + 1e3 * np.ones_like(x["fc7"])
    changed = model.predict(dataset(noisy, {}, rows, 16), verbose=0)["source"]
    assert not np.allclose(changed[~without], before[~without])


def test_geo_layers_at_the_dateline_and_poles_and_the_median_decision():
    import keras

    from newsdl.tasks.metrics import to_unit
    from newsdl.tasks.models import GeoMedian, UnitToLatLon

    lat = np.array([0.0, 0.0, 89.999, -45.0])
    lon = np.array([179.9, -179.9, 10.0, -180.0])
    out = np.asarray(UnitToLatLon()(to_unit(lat, lon).astype("float32")))
    np.testing.assert_allclose(out[:, 0], lat, atol=1e-3)
    np.testing.assert_allclose(np.abs(out[[0, 1, 3], 1]), [179.9, 179.9, 180.0], atol=1e-3)
    np.testing.assert_allclose(UnitToLatLon()(2.5 * to_unit([10.0], [20.0]).astype("float32")), [[10, 20]],
                               atol=1e-4)  # any length: the direction is what counts

    own = to_unit([0.0], [0.0]).astype("float32")
    anchors = to_unit([[0.0, 50.0]], [[90.0, 0.0]]).astype("float32")
    layer = GeoMedian()
    # Half the probability or more on one point: that point, exactly.
    snap = np.asarray(layer([np.array([[0.2, 0.5, 0.3]], "float32"), own, anchors]))
    np.testing.assert_allclose(snap, to_unit([0.0], [90.0]), atol=1e-6)
    # Otherwise the geometric median, which for three equal weights lies inside the triangle.
    mid = np.asarray(layer([np.full((1, 3), 1 / 3, "float32"), own, anchors]))
    assert np.linalg.norm(mid) == pytest.approx(1.0, abs=1e-5)
    assert all(np.linalg.norm(mid - p) > 1e-3 for p in (own[0], anchors[0, 0], anchors[0, 1]))
    model = keras.Sequential([keras.Input((3,)), UnitToLatLon()])
    assert model.output_shape == (None, 2)


def test_gazetteer_ranks_places_and_resolves_names():
    from newsdl.tasks.gazetteer import gazetteer

    g = gazetteer()

    def names(text):
        return [(g.places[m.place].name, g.places[m.place].country, m.count) for m in g.mentions(text)]

    found = names("Flooding hit Durg, India, on Monday. Officials in Durg said rain would continue in Durg. "
                  "Meanwhile in Salt Lake City, prices fell.")
    assert found[0] == ("Durg", "IN", 3) and ("Salt Lake City", "US", 1) in found
    assert ("India", "IN", 1) in found
    # A name shared by several cities: the one in a country the text names, else the largest.
    assert names("Rain in London, Canada.")[0][:2] == ("London", "CA")
    assert names("Rain in London.")[0][:2] == ("London", "GB")
    # Aliases, and a common word at the start of a sentence is not a town ("Police", Poland).
    assert names("The U.S. said so.")[0][:2] == ("United States", "US")
    assert names("Police said nothing.") == []
    assert g.mentions("") == [] and g.mentions(None) == []
    feats = g.features(["Storm in Sydney, Australia. Sydney is flooded.", "no place at all"], top=3)
    assert feats["gaz_mask"].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert feats["gaz_xyz"].shape == (2, 3, 3) and feats["gaz_feat"].shape == (2, 3 * 4 + 2)


def test_cli_user_errors_exit_2_with_one_line(featurized_workspace, tmp_path):  # noqa: F811
    cases = [
        (["train", "weather", "-w", featurized_workspace], "TASK 'weather'"),
        (["train", "source", "-w", featurized_workspace, "--features", "bogus"], "bogus"),
        (["train", "source", "-w", featurized_workspace, "--head", "cells"], "--head"),
        (["train", "geoloc", "-w", featurized_workspace, "--head", "nope"], "--head nope"),
        (["train", "source", "-w", featurized_workspace, "--epochs", "0"], "--epochs 0"),
        (["evaluate", "source", "-w", tmp_path / "empty"], "newsdl train source"),
        (["train", "popularity", "-w", tmp_path / "empty"], "newsdl ingest"),
    ]
    for args, needle in cases:
        result = run_newsdl(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr, (args, result.stderr)
    for task in ("geoloc", "source", "popularity", "caption", "illustrate"):
        assert task in run_newsdl("train", "weather").stderr


def test_help_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, typer; from newsdl.tasks.cli import register; app = typer.Typer(); register(app); "
            "import newsdl.tasks; print('tensorflow' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    result = run_newsdl("train", "--help")
    assert result.returncode == 0 and "--features" in result.stdout and "--epochs" in result.stdout
