"""`newsdl evaluate TASK`: the test metrics of the model and of every baseline, in one run, on the
same test examples; metrics.json, plots and a comparison table. The same for every task.

The test split is read here and nowhere else. Baselines are fitted on train and, where they have
a knob (kNN's k, the regularisation of logistic and ridge regression, CCA's), tuned on val, as the
model's early stopping is: each gets the same chance as the model. evaluate keeps its own record
(evaluate.json), keyed by the train stage's outputs and the options: a rerun is a no-op. metrics.json
names the training run it measured ("run"), and goes with the plots into that run's folder too
(models/TASK/runs/RUN/); with --pdf a PDF is written beside each PNG plot.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from newsdl import workspace
from newsdl.tasks import get
from newsdl.tasks import metrics as M
from newsdl.tasks.data import stage_digest, upstream
from newsdl.tasks.layout import evaluated, write_evaluation
from newsdl.tasks.plots import with_pdfs, writing_pdf
from newsdl.tasks.task import read_saved

log = logging.getLogger("newsdl.tasks")


def evaluate_task(ws: Path, task: str, *, force: bool = False, pdf: bool = False, **options) -> dict:
    """Evaluate TASK's trained model in ``ws``; write and return metrics.json's content.
    Up to date (same model, same inputs, same options): returns the stored metrics at once.
    ``options``: the task's evaluate options (caption: beam; None: the one it was trained with).
    ``pdf``: a PDF beside each PNG plot (part of the record's key: asking for PDFs redoes it)."""
    ws, t = Path(ws), get(task)
    t.use_options(options)  # a usage mistake is told before the model is read
    with workspace.stage_lock(ws / "models" / task, f"evaluate {task}"):
        saved = read_saved(ws, t)
        options = t.use_options(options, saved)
        inputs_meta = upstream(ws)
        # pdf joins the key only when asked, so records written before the option keep their key.
        key = {"train": stage_digest(workspace.read_manifest(saved.folder)), **options,
               **({"pdf": True} if pdf else {})}
        stored = evaluated(saved.folder, inputs_meta, key, force)
        if stored is not None:
            return stored
        t0, started = time.monotonic(), workspace.now()
        with writing_pdf(pdf):
            result, plots = t.evaluate(ws, saved, **options)
        if pdf:
            plots = with_pdfs(plots, saved.folder)
        else:  # PDFs of an earlier `evaluate --pdf` would no longer match their PNGs
            for name in plots:
                if name.endswith(".png"):
                    (saved.folder / name).with_suffix(".pdf").unlink(missing_ok=True)
        resample = result.pop("resample", None)
        scores = result.pop("scores")
        model_scores = scores.pop("model")
        summary = saved.config.get("summary", {})
        metrics = {"task": task, "run": saved.config.get("run"), "n_train": int(result.pop("n_train")),
                   "n_test": int(result.pop("n_test")),
                   "test": model_scores, "baselines": scores, "main_metric": t.main_metric,
                   "beats_every_baseline": all(M.beats(t, model_scores, b) for b in scores.values()),
                   "model": {"head": saved.config.get("head"), "best_epoch": summary.get("best_epoch"),
                             "n_val": int(result.pop("n_val")), **options, **result.pop("model", {})},
                   **result}
        if resample is not None:
            metrics["vs_baselines"] = M.paired_bootstrap(resample, {"model": model_scores, **scores},
                                                         metrics["n_test"], t.metric_keys, saved.config["seed"])
        write_evaluation(saved.folder, metrics, plots, inputs_meta, key, started, time.monotonic() - t0)
        return metrics


def format_table(metrics: dict) -> str:
    """The model against each baseline, one row each, the main metric marked with '*'; a nested
    block of scores (illustrate's image_to_text) gets a table of its own."""
    t = get(metrics["task"])
    keys, main = list(t.metric_keys), metrics.get("main_metric", t.main_metric)
    systems = {"model": metrics["test"], **metrics["baselines"]}
    width = max(len(name) for name in systems)

    def rows(scores: dict) -> list[str]:
        return [f"{name:<{width}} " + " ".join(f"{s[k]:>10.4g}" if isinstance(s[k], float) else f"{s[k]:>10}"
                                                for k in keys) for name, s in scores.items()]

    lines = [f"{metrics['task']}: {metrics['n_test']} test {t.test_unit or t.unit} ({metrics['n_train']} train "
             f"{t.unit})", " " * width + " " + " ".join(f"{k + ('*' if k == main else ''):>10}" for k in keys)]
    lines += rows(systems)
    for name, nested in metrics["test"].items():
        if isinstance(nested, dict):
            lines += [f"{name}:", *rows({n: s[name] for n, s in systems.items()})]
    for name, vs in metrics.get("vs_baselines", {}).items():
        d = vs[main]
        lines.append(f"model - {name}: {main} {d['diff']:+.4g} (95% interval {d['ci95'][0]:+.4g} to "
                     f"{d['ci95'][1]:+.4g}, paired bootstrap over test examples)")
    verdict = "beats" if metrics.get("beats_every_baseline") else "does NOT beat"
    lines.append(f"the model {verdict} every baseline on {main} (* main metric)")
    return "\n".join(lines)
