"""Task heads: training and evaluation of every task, reruns, resume after a kill (early stopping's
count included), determinism, the missing-image mask, the custom layers, the gazetteer and the
CLI's user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from newsdl.tasks.task import Task

from test_tasks_support import (FAST_TRAIN, assert_same_training, copy_workspace,  # noqa: F401
                                featurized_workspace, head_dir, kill_after_checkpoint, popen_newsdl, rerecord,
                                run_newsdl, trained_workspace)

BASELINES = {"geoloc": {"constant", "knn", "gazetteer"}, "source": {"majority", "tfidf_logreg"},
             "popularity": {"mean", "ridge"}}
MONITOR = {"geoloc": "val_km", "source": "val_accuracy", "popularity": "val_comments_loss"}
SUMMARY = {"task", "folder", "head", "features", "n_train", "n_val", "monitor", "val_best", "best_epoch",
           "epochs_run", "seconds", "workers"}


def _weights(task, path):
    from newsdl.tasks import get

    return get(task).load_model(path).get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["geoloc", "source", "popularity"])
def test_each_task_trains_and_writes_complete_metrics(trained_workspace, task):  # noqa: F811
    from newsdl.tasks import get
    from newsdl.tasks import metrics as M

    t = get(task)
    folder = trained_workspace / "models" / task
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["task"] == task
    assert isinstance(metrics["n_train"], int) and metrics["n_train"] > 0
    assert isinstance(metrics["n_test"], int) and metrics["n_test"] > 0
    assert list(metrics["test"]) == list(t.metric_keys)
    assert set(metrics["baselines"]) == BASELINES[task]
    for name, scores in metrics["baselines"].items():
        assert list(scores) == list(t.metric_keys), name
        assert all(isinstance(v, float) and np.isfinite(v) for v in scores.values()), name
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics["test"].values())
    assert metrics["main_metric"] == t.main_metric and t.main_metric in t.metric_keys
    assert metrics["beats_every_baseline"] == all(M.beats(t, metrics["test"], b)
                                                  for b in metrics["baselines"].values())
    # Each baseline's paired difference on every metric, with its 95% bootstrap interval.
    assert set(metrics["vs_baselines"]) == BASELINES[task]
    for name, vs in metrics["vs_baselines"].items():
        assert list(vs) == list(t.metric_keys), name
        for k, d in vs.items():
            assert d["diff"] == pytest.approx(metrics["test"][k] - metrics["baselines"][name][k]), (name, k)
            assert d["ci95"][0] <= d["ci95"][1], (name, k)
    # The model, its config and history, plots and the manifest, written last.
    for name in ("model.keras", "config.json", "history.csv", "manifest.json"):
        assert (folder / name).is_file(), name
    plots = {"geoloc": ["error_cdf.png", "world.png"], "source": ["confusion.png"],
             "popularity": ["predicted_vs_true.png"]}[task]
    for plot in plots:
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two stages, two records: train's (the model) and evaluate's (metrics and plots, keyed by
    # what train wrote: the digest of its record's outputs, the model's sha256 among them).
    from newsdl.tasks.data import stage_digest

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stage"] == "train" and "model.keras" in manifest["outputs"] and manifest["inputs"]
    assert "metrics.json" not in manifest["outputs"]
    record = json.loads((folder / "evaluate.json").read_text())
    assert record["stage"] == "evaluate" and {"metrics.json", *plots} == set(record["outputs"])
    assert record["config"] == {"train": stage_digest(manifest)}
    other = {**manifest, "outputs": {**manifest["outputs"], "model.keras": {**manifest["outputs"]["model.keras"],
                                                                            "sha256": "0" * 64}}}
    assert stage_digest(other) != record["config"]["train"]  # another model, another key
    assert record["inputs"] == manifest["inputs"]
    history = (folder / "history.csv").read_text().splitlines()
    assert 2 <= len(history) <= 1 + FAST_TRAIN["epochs"]
    config = json.loads((folder / "config.json").read_text())
    assert config["features"] and config["seed"] == FAST_TRAIN["seed"]
    # The summary: the chosen head's val outcome, named by its monitor.
    summary = config["summary"]
    assert SUMMARY <= set(summary) and "val_score" not in summary
    assert summary["task"] == task and summary["head"] == config["head"] and summary["workers"] == 1
    assert summary["monitor"] == MONITOR[task] == t.monitor and summary["features"] == config["features"]
    assert summary["epochs_run"] == len(history) - 1 and 0 <= summary["best_epoch"] <= summary["epochs_run"]
    assert MONITOR[task] in history[0].split(",")
    if summary["best_epoch"] > 0:  # else the untrained model (the linear start) was the best
        best_row = dict(zip(history[0].split(","), history[summary["best_epoch"]].split(",")))
        assert float(best_row[MONITOR[task]]) == pytest.approx(summary["val_best"], abs=1e-6)
    # Each head trained in runs/RUN/heads/HEAD/; the best one's model and history are the task's.
    for head, outcome in config["heads"].items():
        run_dir = head_dir(folder, head)
        for name in ("run.json", "best.keras", "history.csv", "done.json", "backup/checkpoint"):
            assert (run_dir / name).is_file(), (head, name)
        assert outcome == json.loads((run_dir / "done.json").read_text())
        assert {"head", "val_best", "monitor", "best_epoch", "epochs_run", "score"} <= set(outcome)
        assert outcome["head"] == head and outcome["monitor"] == MONITOR[task]
    best = config["heads"][config["head"]]
    assert min(config["heads"].values(), key=lambda o: o["score"]) == best
    assert {k: summary[k] for k in ("val_best", "best_epoch", "epochs_run")} == \
        {k: best[k] for k in ("val_best", "best_epoch", "epochs_run")}
    run_dir = head_dir(folder, config["head"])
    assert (run_dir / "best.keras").read_bytes() == (folder / "model.keras").read_bytes()
    assert (run_dir / "history.csv").read_text() == (folder / "history.csv").read_text()
    if task == "geoloc":
        assert config["head"] in ("regress", "cells") and set(config["heads"]) == {"regress", "cells"}
        assert "gaz" in config["features"] and len(config["fitted"]["cells"]) >= 1
        # Lower km is better: the kept head has the lower val mean km.
        assert summary["val_best"] == min(o["val_best"] for o in config["heads"].values())
    else:
        assert config["head"] == "default" and set(config["heads"]) == {"default"}
    if task == "source":
        assert config["fitted"]["classes"] == sorted(config["fitted"]["classes"])
        assert "fc7" in config["features"] and "tokens" in config["features"]
    assert not any(p.name.startswith(".tmp-") for p in folder.rglob("*"))


@pytest.mark.slow
def test_models_load_in_safe_mode_and_reruns_are_no_ops(trained_workspace):  # noqa: F811
    import keras

    from newsdl.tasks import evaluate_task, train_task

    folder = trained_workspace / "models" / "source"
    model = keras.models.load_model(folder / "model.keras", safe_mode=True, compile=False)
    # Outputs are named, as every task's: the prediction, and the frozen linear part's logits
    # that the late fusion reads.
    assert list(model.output) == ["source", "linear"]
    before = (folder / "model.keras").stat().st_mtime_ns
    assert train_task(trained_workspace, "source", **FAST_TRAIN)["skipped"] is True
    assert (folder / "model.keras").stat().st_mtime_ns == before
    metrics_written = (folder / "metrics.json").stat().st_mtime_ns
    again = evaluate_task(trained_workspace, "source")
    assert again == json.loads((folder / "metrics.json").read_text())
    assert (folder / "metrics.json").stat().st_mtime_ns == metrics_written  # up to date: not recomputed


@pytest.mark.slow
def test_same_seed_same_model_other_seed_other_model(featurized_workspace, tmp_path):  # noqa: F811
    from newsdl.tasks import train_task

    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        ws = copy_workspace(featurized_workspace, tmp_path / name)
        train_task(ws, "popularity", epochs=2, batch_size=16, seed=seed)
        runs[name] = ws / "models" / "popularity"
    a, b, c = (_weights("popularity", runs[n] / "model.keras") for n in "abc")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert (runs["a"] / "history.csv").read_text() == (runs["b"] / "history.csv").read_text()
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.slow
def test_a_killed_training_resumes_where_it_stopped(featurized_workspace, tmp_path):  # noqa: F811
    """Kill `newsdl train` once its second epoch is checkpointed; the rerun resumes after it and
    ends with the history, outcome and very weights of a run that was never interrupted."""
    args = ["--epochs", "5", "--patience", "10", "--batch-size", "8", "--seed", "5"]
    killed = copy_workspace(featurized_workspace, tmp_path / "killed")
    whole = copy_workspace(featurized_workspace, tmp_path / "whole")
    folder = killed / "models" / "source"
    proc = popen_newsdl("train", "source", "-w", killed, *args)
    epoch = kill_after_checkpoint(proc, lambda: head_dir(folder, "default") / "backup", 2)
    run_dir = head_dir(folder, "default")
    assert 2 <= epoch < 5
    assert not (killed / "models" / "source" / "manifest.json").exists() and not (run_dir / "done.json").exists()

    resumed = run_newsdl("train", "source", "-w", killed, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"source: resuming after epoch {epoch}" in resumed.stderr
    assert "untrained (initial) model" not in resumed.stderr
    assert f"source epoch {epoch}/5:" not in resumed.stderr and f"source epoch {epoch + 1}/5:" in resumed.stderr
    assert "source epoch 5/5:" in resumed.stderr
    history = (killed / "models" / "source" / "history.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in history[1:]] == [0, 1, 2, 3, 4]

    assert run_newsdl("train", "source", "-w", whole, *args).returncode == 0
    assert_same_training(killed, whole, "source")


class ScriptedTask(Task):
    """A task whose monitored val value follows ``script`` by epoch (index 0: the untrained model),
    for the loop's early stopping. The epoch is read from the model itself: a bias that Adam moves
    by lr per step against a constant gradient, one step per epoch, so the script also goes wrong
    if a resumed run does not restore the model and the optimizer."""

    name, monitor, min_delta, lr, lr_half_life = "scripted", "val_script", 1e-3, 0.25, None
    val_outputs = ("out",)

    def __init__(self, script, mode):
        self.script, self.mode = list(script), mode

    def build(self, data, s, head):
        import keras

        inp = keras.Input((1,), name="x")
        out = keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros", name="out")(inp)
        return keras.Model({"x": inp}, {"out": out})

    def losses(self, y, pred, batch):
        import tensorflow as tf

        return {"loss": tf.reshape(pred["out"], [-1])}  # inputs are 0: the bias's gradient is 1

    def validate(self, data, outputs):
        epoch = int(round(-float(np.mean(outputs["out"])) / self.lr))
        return {"val_script": self.script[epoch]}


@pytest.mark.slow
def test_a_resumed_run_keeps_its_early_stopping_count_in_both_directions(tmp_path):
    """The loop's checkpoint holds early stopping's count: a run resumed after epoch 2 (its count
    at 1) stops after epoch 4 with patience 3, as the uninterrupted run does, not after epoch 5;
    a run whose count had reached its patience does nothing more. The same for a value to
    maximise (mode max)."""
    from newsdl.tasks import loop
    from newsdl.tasks.task import Data

    # Untrained 1.0; epoch 1 best (0.5); no improvement by more than min_delta for three epochs;
    # a late improvement (epoch 6) that a count reset to 0 would reach.
    script = [1.0, 0.5, 0.6, 0.5005, 0.7, 0.9, 0.1, 0.1, 0.1]
    x, y = {"x": np.zeros((6, 1), np.float32)}, {"t": np.zeros((6, 1), np.float32)}
    data = Data(x, y, {"train": np.arange(4), "val": np.arange(4, 6), "test": np.arange(0)})

    def fit(task, run_dir, epochs):
        s = {"epochs": epochs, "batch_size": 16, "lr": task.lr, "seed": 1, "patience": 3}
        run_dir.mkdir(parents=True, exist_ok=True)  # train.py makes it, with run.json
        loop.fit(task, data, s, "default", run_dir, tmp_path / "logs", loop.Cluster())
        return loop.read_history(run_dir / "history.csv", None), loop.outcome(task, run_dir)

    for mode, sign in (("min", 1.0), ("max", -1.0)):
        task = ScriptedTask([sign * v for v in script], mode)
        whole, resumed = tmp_path / mode / "whole", tmp_path / mode / "resumed"
        history, outcome = fit(task, whole, 8)
        assert [r["epoch"] for r in history] == [0, 1, 2, 3]  # stopped after epoch 4
        assert [r["val_script"] for r in history] == [sign * v for v in script[1:5]]
        assert (outcome["best_epoch"], outcome["epochs_run"], outcome["val_best"]) == (1, 4, sign * 0.5)
        assert fit(task, whole, 8) == (history, outcome)  # the count had run out: nothing more

        fit(task, resumed, 2)  # ends at the cap after epoch 2, its count at 1
        assert loop.outcome(task, resumed)["epochs_run"] == 2
        assert fit(task, resumed, 8) == (history, outcome)


@pytest.mark.slow
def test_articles_without_images_are_masked_not_faked(featurized_workspace, tmp_path):  # noqa: F811
    """Drop the image features of some articles: they get mask 0, and the model's output for
    them does not depend on whatever sits in their fc7 slot."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from newsdl.tasks import get, train_task
    from newsdl.tasks.articles import model_inputs
    from newsdl.tasks.data import dataset, load_corpus
    from newsdl.tasks.task import read_saved

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

    # Without the bag of words the linear part reads the dense blocks, fc7 among them, so even
    # the untrained candidate (which a 2-epoch run on 60 articles may keep) reads the images.
    train_task(ws, "source", features="w2v_mean,w2v_max,fc7", **FAST_TRAIN)
    saved = read_saved(ws, get("source"))
    model = get("source").load_model(saved.folder / "model.keras")
    x = model_inputs(corpus, saved.config["features"], saved.fitted)
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

    from newsdl.geo import to_unit
    from newsdl.tasks.geoloc import GeoMedian, UnitToLatLon

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
    from newsdl.features.gazetteer import gazetteer

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


@pytest.mark.slow
def test_cli_user_errors_exit_2_with_one_line(featurized_workspace, trained_workspace, tmp_path):  # noqa: F811
    (tmp_path / "new.jsonl").write_text(json.dumps({"id": "n1", "text": "Rain in Sydney."}) + "\n")
    cases = [
        (["train", "weather", "-w", featurized_workspace], "TASK 'weather'"),
        (["train", "source", "-w", featurized_workspace, "--features", "bogus"], "bogus"),
        (["train", "source", "-w", featurized_workspace, "--head", "cells"], "--head cells: source has no such option"),
        (["train", "popularity", "-w", featurized_workspace, "--beam", "2"], "--beam 2: popularity has no such option"),
        (["evaluate", "source", "-w", trained_workspace, "--beam", "2"], "--beam 2: source has no such option"),
        (["predict", "geoloc", tmp_path / "new.jsonl", "-w", trained_workspace, "--beam", "2"],
         "--beam 2: geoloc has no such option"),
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


def test_standardisation_clamps_new_values_to_the_training_range(tmp_path):
    """Training rows pass the input layer exactly as plain standardisation would; a value beyond
    the training range counts as the range's end (a short story's word2vec max is hundreds of
    deviations out where long articles saturate); the baselines' matrices agree; the layer's
    range survives a safe-mode save and load."""
    import keras

    from newsdl.tasks.baselines import dense_blocks
    from newsdl.tasks.data import floored_variance
    from newsdl.tasks.models import normalizer

    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 4)).astype(np.float32)
    data[:, 3] = 0.5 + 1e-6 * rng.normal(size=200)  # almost constant on train
    inp = keras.Input((4,))
    model = keras.Model(inp, normalizer("w2v_max_norm", data)(inp))
    std = np.sqrt(floored_variance(data.astype(np.float64).var(axis=0)))
    want = (data - data.mean(axis=0)) / std
    assert np.abs(model.predict(data, verbose=0) - want).max() < 1e-3
    new = np.array([[100.0, -100.0, 0.0, -3.0]], np.float32)
    edge = np.array([[data[:, 0].max(), data[:, 1].min(), 0.0, data[:, 3].min()]], np.float32)
    got = model.predict(new, verbose=0)
    assert np.abs(got - model.predict(edge, verbose=0)).max() < 1e-5
    assert np.abs(got).max() < 10  # unclamped, the last column would be ~-1e6 deviations
    both = np.concatenate([data, new])
    blocks, _ = dense_blocks({"w2v_max": both}, ["w2v_max"], np.arange(200))
    assert np.abs(blocks[-1] * 2 - got[0]).max() < 1e-3  # the block is scaled by 1/sqrt(4 columns)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    assert np.abs(again.predict(new, verbose=0) - got).max() == 0
