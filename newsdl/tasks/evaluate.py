"""`newsdl evaluate TASK`: the test metrics of the model and of every baseline, in one run, on the
same test articles; metrics.json, plots and a comparison table.

The test split is read here and nowhere else. Baselines are fitted on train and, where they have
a knob (kNN's k, the regularisation of logistic and ridge regression), tuned on val, as the
model's early stopping is: each gets the same chance as the model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from newsdl import workspace
from newsdl.errors import UserError
from newsdl.tasks import metrics as M
from newsdl.tasks.data import load_corpus, upstream
from newsdl.tasks.layout import MODEL, evaluated, write_evaluation
from newsdl.tasks.prepare import model_inputs, read_saved, split_rows, task_module

log = logging.getLogger("newsdl.tasks")


def evaluate_task(ws: Path, task: str, *, force: bool = False, beam: int | None = None) -> dict:
    """Evaluate TASK's trained model in ``ws``; write and return metrics.json's content.
    Up to date (same model, same inputs): returns the stored metrics at once.
    ``beam``: caption only, the beam width (None: the one it was trained with)."""
    with workspace.stage_lock(Path(ws) / "models" / task, f"evaluate {task}"):
        return _evaluate_task(Path(ws), task, force=force, beam=beam)


def _evaluate_task(ws: Path, task: str, *, force: bool, beam: int | None) -> dict:
    from newsdl import defaults as td

    if task in td.MULTIMODAL_TASKS:  # caption, illustrate: their own modules
        import importlib

        if beam is not None and task != "caption":
            raise UserError(f"--beam {beam}: only caption has this option")
        return importlib.import_module(f"newsdl.tasks.{task}").evaluate(
            ws, force=force, **({"beam": beam} if beam is not None else {}))

    ws = Path(ws)
    mod = task_module(task)
    saved = read_saved(ws, task)
    folder = saved.folder
    inputs_meta = upstream(ws)
    model_key = {"model_sha256": workspace.sha256_file(folder / MODEL)}
    stored = evaluated(folder, inputs_meta, model_key, force)
    if stored is not None:
        return stored
    t0 = time.monotonic()
    started = workspace.now()
    corpus = load_corpus(ws)
    features = saved.features
    missing = [f for f in features if f not in corpus.available]
    if missing:
        raise UserError(f"{ws / 'features'}: the {task} model reads {', '.join(missing)}, which this workspace "
                        f"no longer has; rerun `newsdl featurize` or retrain")
    rows = split_rows(corpus, mod.labelled(corpus), saved.config["seed"])
    if len(rows["test"]) == 0:
        raise UserError(f"{ws / 'ingest' / 'articles.parquet'}: no labelled article in the test split "
                        f"(field 'split'), nothing to evaluate {task} on")
    fitted = saved.fitted
    x = model_inputs(corpus, features, fitted)

    from newsdl.tasks.data import dataset
    from newsdl.tasks.models import load

    model = load(folder / MODEL)
    test = corpus.take(rows["test"])
    preds = {"model": mod.predict(model, dataset(x, {}, rows["test"], saved.config["batch_size"]), fitted)}
    preds.update(mod.baselines(corpus, x, features, rows, fitted))

    scores = {name: mod.score(test, pred, fitted) for name, pred in preds.items()}
    key, higher = M.MAIN[task]
    model_scores = scores.pop("model")
    metrics = {
        "task": task,
        "n_train": int(len(rows["train"])),
        "n_test": int(len(rows["test"])),
        "test": model_scores,
        "baselines": scores,
        "main_metric": key,
        "beats_every_baseline": all(M.beats(task, model_scores, b) for b in scores.values()),
        "model": {"head": saved.config["head"], "features": features,
                  "best_epoch": saved.config.get("summary", {}).get("best_epoch"), "n_val": int(len(rows["val"]))},
        "baseline_params": {name: pred["params"] for name, pred in preds.items() if "params" in pred},
    }
    plots = mod.plots(folder, test, preds, fitted)
    write_evaluation(folder, metrics, plots, inputs_meta, model_key, started, time.monotonic() - t0)
    return metrics


def format_table(metrics: dict) -> str:
    """The model against each baseline, one row each, the main metric marked with '*'."""
    keys = list(M.KEYS[metrics["task"]])
    main = metrics.get("main_metric", M.MAIN[metrics["task"]][0])
    head = ["", *[k + ("*" if k == main else "") for k in keys]]
    rows = [["model", *(metrics["test"][k] for k in keys)]]
    rows += [[name, *(b[k] for k in keys)] for name, b in metrics["baselines"].items()]
    width = max(len(str(r[0])) for r in rows + [head])

    def cell(v):
        return f"{v:>10.4g}" if isinstance(v, float) else f"{v:>10}"

    # caption counts images; illustrate ranks test articles but trains on image-text pairs.
    test_unit, train_unit = {"caption": ("images", "images"), "illustrate": ("articles", "pairs")}.get(
        metrics["task"], ("articles", "articles"))
    lines = [f"{metrics['task']}: {metrics['n_test']} test {test_unit} ({metrics['n_train']} train {train_unit})",
             f"{head[0]:<{width}} " + " ".join(f"{h:>10}" for h in head[1:])]
    lines += [f"{r[0]:<{width}} " + " ".join(cell(v) for v in r[1:]) for r in rows]
    if isinstance(metrics["test"].get("image_to_text"), dict):  # illustrate's other direction
        nested = [["model", *(metrics["test"]["image_to_text"][k] for k in keys)]]
        nested += [[name, *(b["image_to_text"][k] for k in keys)] for name, b in metrics["baselines"].items()]
        lines.append("image_to_text:")
        lines += [f"{r[0]:<{width}} " + " ".join(cell(v) for v in r[1:]) for r in nested]
    verdict = "beats" if metrics.get("beats_every_baseline") else "does NOT beat"
    lines.append(f"the model {verdict} every baseline on {main} (* main metric)")
    return "\n".join(lines)
