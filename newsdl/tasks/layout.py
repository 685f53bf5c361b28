"""What a task's folder (models/TASK/) holds, by name, for every module that reads or writes it.

Two stages write there, each with its own record: train (manifest.json: the model and what was
fitted) and evaluate (evaluate.json: the metrics and plots, keyed by the digest of train's record,
which holds the sha256 of the model and of every file fitted with it).
"""

from __future__ import annotations

from pathlib import Path

from newsdl import workspace

TRAIN_STAGE = "train"
EVALUATE_STAGE = "evaluate"
CONFIG = "config.json"  # the settings, what was fitted, and the training summary
MODEL = "model.keras"
HISTORY = "history.csv"
BOW = "bow.json"  # the TF-IDF vocabulary fitted on train
VOCAB = "vocab.json"  # caption's word list
CCA = "cca.npz"  # illustrate's CCA baseline
METRICS = "metrics.json"
EVALUATION = "evaluate.json"  # evaluate's stage record
RECALL_PLOT = "recall_at_k.png"


def reset_for_training(folder: Path) -> None:
    """Mark the task folder unfinished before a training run replaces its files: the train record
    goes, and so does evaluate's, whose metrics are of the model being replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    workspace.clean_temporaries(folder)
    workspace.invalidate(folder)
    (folder / EVALUATION).unlink(missing_ok=True)


def evaluated(folder: Path, inputs: list[dict], key: dict, force: bool) -> dict | None:
    """The stored metrics when evaluate computed them for this very model (``key``: train's record's
    digest and the options), the same upstream inputs, and its outputs are still the files it wrote."""
    import json
    import logging

    if force or not workspace.is_up_to_date(folder, inputs, key, record=EVALUATION):
        return None
    logging.getLogger("newsdl.tasks").info("metrics up to date in %s (use --force to recompute)", folder / METRICS)
    return json.loads((folder / METRICS).read_text(encoding="utf-8"))


def write_evaluation(folder: Path, metrics: dict, plots: list[str], inputs: list[dict], key: dict,
                     started: str, seconds: float) -> None:
    """metrics.json, then evaluate's record of it and the plots (written last: it marks them done)."""
    workspace.write_json(folder / METRICS, metrics)
    workspace.write_manifest(folder, EVALUATE_STAGE, inputs=inputs, config=key, counts={"test": metrics["n_test"]},
                             outputs=[METRICS, *plots], started=started, record=EVALUATION,
                             extra={"task": metrics["task"], "seconds": round(seconds, 1)})
