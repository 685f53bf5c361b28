"""Training runs: one folder per `newsdl train` run (models/TASK/runs/RUN/), the current one's files
in models/TASK/, no metrics of another model left beside a new one, `newsdl metrics show|diff`,
and the train/evaluate/predict CLI's choices, defaults and one-line errors."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from newsdl import workspace
from newsdl.tasks import layout

from test_tasks_support import copy_workspace, featurized_workspace, head_dir, run_newsdl  # noqa: F401


# ------------------------------------------------------------------ the CLI's choices and defaults

@pytest.mark.parametrize("args, names", [
    (["train", "nosuch"], ["TASK 'nosuch'", "geoloc, source, popularity, caption, illustrate"]),
    (["train", "geoloc", "--head", "both"], ["--head both", "regress, cells, auto"]),
    (["train", "source", "--distributed", "mpi"], ["--distributed mpi", "none, slurm, tf_config"]),
    (["evaluate", "sauce"], ["TASK 'sauce'"]),
    (["predict", "illustrate", "in.jsonl", "--gallery", "web"], ["--gallery web", "input, workspace"]),
])
def test_a_value_outside_the_choices_is_a_one_line_usage_error(tmp_path, args, names):
    result = run_newsdl(*args, "-w", tmp_path / "ws")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("newsdl: error: "), result.stderr
    assert all(n in lines[0] for n in names), lines[0]
    assert not (tmp_path / "ws").exists()  # refused before anything was written


def test_help_lists_the_choices_and_the_defaults():
    text = " ".join(run_newsdl("train", "--help").stdout.split())  # unwrapped
    assert "--head [regress|cells|auto]" in text and "--distributed [none|slurm|tf_config]" in text
    assert "geoloc, source, popularity, caption, illustrate" in text
    from newsdl import defaults as td

    for option, default in (("--epochs", td.EPOCHS), ("--lr", td.LEARNING_RATE), ("--batch-size", td.BATCH_SIZE),
                            ("--patience", td.PATIENCE), ("--head", "auto"), ("--seed", td.SEED),
                            ("--beam", td.CAPTION_BEAM), ("--workspace", "$NEWSDL_WORKSPACE"),
                            ("--distributed", "none")):
        after = text.split(f"{option} ", 1)[1].split(" --", 1)[0]
        assert f"[default: {default}" in after, (option, after)
    evaluate = " ".join(run_newsdl("evaluate", "--help").stdout.split())
    assert "--pdf" in evaluate and "PDF" in evaluate
    predict = " ".join(run_newsdl("predict", "--help").stdout.split())
    assert "--gallery [input|workspace]" in predict and "[default: input]" in predict
    assert "- writes JSON Lines to stdout" in predict and ".csv" in predict
    metrics = run_newsdl("metrics", "--help").stdout
    assert "show" in metrics and "diff" in metrics


# ------------------------------------------------------------------ run ids and train's words

def test_run_ids_sort_by_time_and_a_collision_gets_a_suffix(tmp_path):
    when = datetime(2026, 12, 1, 23, 31, 0, tzinfo=timezone.utc)
    ids = [layout.new_run(tmp_path, {"n": i}, when) for i in range(11)]
    assert ids[:3] == ["20261201-233100", "20261201-233100-2", "20261201-233100-3"]
    assert layout.run_ids(tmp_path) == ids  # -10 after -9
    assert layout.new_run(tmp_path, {}, datetime(2026, 12, 2, tzinfo=timezone.utc)) == layout.run_ids(tmp_path)[-1]
    assert layout.unfinished_run(tmp_path, {"n": 4}) == ids[4]
    layout.finish_run(tmp_path, ids[4], {})
    assert layout.unfinished_run(tmp_path, {"n": 4}) is None  # a finished run is never resumed

    from newsdl.tasks.train import decode_run, encode_run

    assert [decode_run(encode_run(r)) for r in ids[:3] + ids[-1:]] == ids[:3] + ids[-1:]


def test_the_calibration_line_is_short():
    from newsdl.tasks.train import calibration_text

    text = calibration_text({"deep_weight": 0.7, "temperature": 1.234567, "linear_bias": [0.1] * 12,
                             "place_threshold": None})
    assert text == "deep_weight 0.7, temperature 1.235, linear_bias (12 values), place_threshold None"


# ------------------------------------------------------------------ metrics show / diff, on made-up runs

def _fake_run(ws: Path, task: str, run: str, settings: dict, scores: dict, evaluated: bool = True) -> Path:
    """A run of ``task`` as train and evaluate leave it (its files made up): current in models/TASK/."""
    folder = ws / "models" / task
    run_dir = folder / "runs" / run
    run_dir.mkdir(parents=True)
    folder.mkdir(exist_ok=True)
    for name in ("model.keras", "history.csv"):
        workspace.write_text(folder / name, run)  # replaced, as train does: the old run keeps its file
    layout.reset_for_training(folder)
    config = {"task": task, **settings, "run": run, "head": "default",
              "summary": {"monitor": "val_comments_loss", "val_best": scores["val"], "run": run}}
    workspace.write_json(folder / "config.json", config)
    layout.archive(folder, ["model.keras", "config.json", "history.csv"], run_dir)
    workspace.write_manifest(folder, "train", inputs=[], config=settings, counts={}, outputs=["model.keras"],
                             started=workspace.now(), extra={"task": task, "run": run})
    if evaluated:
        metrics = {"task": task, "run": run, "n_train": 40, "n_test": 10, "main_metric": "spearman",
                   "test": {"spearman": scores["model"], "mae_log": 0.5},
                   "baselines": {"mean": {"spearman": 0.0, "mae_log": 0.9},
                                 "ridge": {"spearman": scores["ridge"], "mae_log": 0.6}},
                   "vs_baselines": {"ridge": {"spearman": {"diff": scores["model"] - scores["ridge"],
                                                           "ci95": [-0.05, 0.25]}}}}
        (folder / "plot.png").write_bytes(b"png")
        layout.write_evaluation(folder, metrics, ["plot.png"], [], {"train": run}, workspace.now(), 1.0)
    return run_dir


def test_metrics_show_and_diff_on_two_runs(tmp_path):
    ws = tmp_path / "ws"
    old = _fake_run(ws, "popularity", "20261201-100000", {"epochs": 2, "features": ["w2v_mean"]},
                    {"model": 0.4, "ridge": 0.3, "val": 1.5})
    assert (old / "metrics.json").is_file() and (old / "plot.png").is_file()  # archived in the run's folder
    new = _fake_run(ws, "popularity", "20261201-110000", {"epochs": 3, "features": ["w2v_mean", "w2v_max"]},
                    {"model": 0.5, "ridge": 0.3, "val": 1.2}, evaluated=False)
    folder = ws / "models" / "popularity"
    # The old run's metrics and plot left models/TASK/ with its model, and stay in its folder.
    assert not (folder / "metrics.json").exists() and not (folder / "plot.png").exists()
    assert json.loads((old / "metrics.json").read_text())["run"] == old.name
    assert (new / "model.keras").read_text() == new.name

    shown = run_newsdl("metrics", "show", "-w", ws)
    assert shown.returncode == 0, shown.stderr
    line = [x for x in shown.stdout.splitlines() if x.startswith("popularity")][0]
    assert new.name in line and "not evaluated" in line

    # Evaluated: the model against the best baseline on the main metric, with the interval.
    layout.write_evaluation(folder, {"task": "popularity", "run": new.name, "n_train": 40, "n_test": 10,
                                     "main_metric": "spearman", "test": {"spearman": 0.5, "mae_log": 0.4},
                                     "baselines": {"mean": {"spearman": 0.0, "mae_log": 0.9},
                                                   "ridge": {"spearman": 0.3, "mae_log": 0.6}},
                                     "vs_baselines": {"ridge": {"spearman": {"diff": 0.2, "ci95": [0.05, 0.31]}}}},
                            [], [], {"train": new.name}, workspace.now(), 1.0)
    shown = run_newsdl("metrics", "show", "-w", ws)
    header, line = shown.stdout.splitlines()[0], [x for x in shown.stdout.splitlines() if x.startswith("popularity")][0]
    assert "best baseline" in header and "95% CI" in header
    for cell in (new.name, "spearman (higher)", "0.5", "ridge", "0.3", "+0.2 (+0.05 to +0.31)"):
        assert cell in line, (cell, line)
    assert "not evaluated" not in line and "stale" not in line
    as_json = json.loads(run_newsdl("metrics", "show", "-w", ws, "--json").stdout)
    row = {r["task"]: r for r in as_json["tasks"]}["popularity"]
    assert row == {"task": "popularity", "run": new.name, "metric": "spearman", "higher_is_better": True,
                   "value": 0.5, "baseline": "ridge", "baseline_value": 0.3, "diff": 0.2, "ci95": [0.05, 0.31],
                   "flag": ""}

    # Metrics of another run than the current model's are flagged, in show and in status.
    metrics = json.loads((folder / "metrics.json").read_text())
    workspace.write_json(folder / "metrics.json", {**metrics, "run": old.name})
    row = {r["task"]: r for r in json.loads(run_newsdl("metrics", "show", "-w", ws, "--json").stdout)["tasks"]}
    assert old.name in row["popularity"]["flag"] and "newsdl evaluate popularity" in row["popularity"]["flag"]
    from newsdl.status import stage_states

    assert {r["stage"]: r["state"] for r in stage_states(ws)}["models/popularity"] == "stale"
    workspace.write_json(folder / "metrics.json", metrics)

    # diff: every metric, old, new, change; the settings that differ.
    for a, b in ((f"popularity/{old.name}", f"popularity/{new.name}"), (old.name, "popularity"),
                 ("popularity~1", str(new))):
        d = run_newsdl("metrics", "diff", a, b, "-w", ws)
        assert d.returncode == 0, (a, b, d.stderr)
        lines = d.stdout.splitlines()
        assert lines[0] == f"popularity/{old.name} -> popularity/{new.name}"
        rows = {x.split()[0]: x.split()[1:] for x in lines[1:] if x.strip()}
        assert rows["model.spearman"] == ["0.4", "0.5", "+0.1"]
        assert rows["ridge.spearman"] == ["0.3", "0.3", "+0"]
        assert rows["val.val_comments_loss"] == ["1.5", "1.2", "-0.3"]
        assert rows["epochs"] == ["2", "3"] and rows["features"] == ["w2v_mean", "w2v_mean,w2v_max"]
        assert "head" not in rows  # the same in both runs
    as_json = json.loads(run_newsdl("metrics", "diff", old.name, new.name, "-w", ws, "--json").stdout)
    assert {c["key"]: c["change"] for c in as_json["metrics"]}["model.spearman"] == pytest.approx(0.1)
    assert {c["key"]: (c["old"], c["new"]) for c in as_json["params"]} == {
        "epochs": (2, 3), "features": (["w2v_mean"], ["w2v_mean", "w2v_max"])}

    for bad in ("popularity/20990101-000000", "20990101-000000", "nosuch", "popularity~5", "geoloc"):
        r = run_newsdl("metrics", "diff", bad, "popularity", "-w", ws)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
        assert r.stderr.startswith("newsdl: error: ") and bad in r.stderr, r.stderr


def test_metrics_show_on_a_workspace_without_models(tmp_path):
    r = run_newsdl("metrics", "show", "-w", tmp_path)
    assert r.returncode == 0 and "no trained task" in r.stdout
    assert json.loads(run_newsdl("metrics", "show", "-w", tmp_path, "--json").stdout)["tasks"] == []
    assert run_newsdl("metrics", "show", "-w", tmp_path / "nope").returncode == 2


# ------------------------------------------------------------------ real training runs

@pytest.mark.slow
def test_each_train_run_has_its_folder_and_the_current_one_is_alone(featurized_workspace, tmp_path):  # noqa: F811
    from newsdl.status import stage_states
    from newsdl.tasks import evaluate_task, train_task

    ws = copy_workspace(featurized_workspace, tmp_path / "ws")
    folder = ws / "models" / "popularity"
    first = train_task(ws, "popularity", epochs=2, batch_size=16, seed=3)
    assert first["stop"].startswith(("early stopping after", "the epoch cap (2 epochs)")), first["stop"]
    assert first["run"] == layout.current_run(folder)
    from newsdl.tasks.cli import train_line

    line = train_line("popularity", first)
    assert f"run {first['run']}" in line and f"at epoch {first['best_epoch']} of" in line and first["stop"] in line
    evaluate_task(ws, "popularity")
    plots = [p.name for p in folder.glob("*.png")]
    assert plots and (folder / "metrics.json").is_file()
    run1 = folder / "runs" / first["run"]
    for name in ("run.json", "config.json", "model.keras", "history.csv", "metrics.json", *plots):
        assert (run1 / name).is_file(), name
    assert (run1 / "model.keras").read_bytes() == (folder / "model.keras").read_bytes()
    assert (head_dir(folder, "default") / "backup" / "checkpoint").is_file()
    assert any((run1 / "logs" / "default").iterdir())  # this run's TensorBoard scalars

    second = train_task(ws, "popularity", epochs=3, batch_size=16, seed=4)
    run2 = folder / "runs" / second["run"]
    assert second["run"] != first["run"] and layout.run_ids(folder) == [first["run"], second["run"]]
    config = json.loads((folder / "config.json").read_text())
    assert config["run"] == second["run"] and json.loads((folder / "manifest.json").read_text())["run"] == second["run"]
    assert (run2 / "model.keras").read_bytes() == (folder / "model.keras").read_bytes()
    # Nothing of the first model's evaluation beside the second model; all of it in its own run.
    assert not (folder / "metrics.json").exists() and not (folder / "evaluate.json").exists()
    assert not any(folder.glob("*.png")) and all((run1 / p).is_file() for p in plots)
    assert json.loads((run1 / "metrics.json").read_text())["run"] == first["run"]
    assert any((run2 / "logs" / "default").iterdir())  # logs of each run apart
    row = {r["stage"]: r for r in stage_states(ws)}["models/popularity"]
    assert "not evaluated" in row["detail"] and second["run"] in row["detail"]

    metrics = evaluate_task(ws, "popularity", pdf=True)
    assert metrics["run"] == second["run"] and (run2 / "metrics.json").is_file()
    assert all((folder / p).with_suffix(".pdf").is_file() for p in plots)
    assert all((run2 / p).with_suffix(".pdf").is_file() for p in plots)
    row = {r["stage"]: r for r in stage_states(ws)}["models/popularity"]
    assert row["state"] == "done" and "evaluated" in row["detail"] and "not evaluated" not in row["detail"]

    d = run_newsdl("metrics", "diff", "popularity~1", "popularity", "-w", ws)
    assert d.returncode == 0, d.stderr
    rows = {x.split()[0]: x.split()[1:] for x in d.stdout.splitlines()[1:] if x.strip()}
    assert "model.spearman" in rows and rows["epochs"] == ["2", "3"] and rows["seed"] == ["3", "4"]
