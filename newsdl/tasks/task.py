"""The one shape every task has: `Task`, which train, evaluate and predict drive without asking
which task they run (fairseq's FairseqTask, in small).

A task says what it learns from and how it is judged:
- its settings' defaults, the options only it has, the monitored val value and its direction;
- ``load``: the arrays of one training run (inputs, targets, the rows of each split, what was
  fitted on train), and ``save``: the fitted files that evaluate and predict read back;
- ``build``: its Keras model, a dict of named outputs; ``losses``: each example's loss terms as
  TensorFlow ops (the loop sums them over the global batch, on one worker or several);
- ``validate``: val values that are not loss terms (mean km, recall@10), from the val outputs;
- ``evaluate``: the test scores of the model and of every baseline, with plots;
- ``predict``: new articles in, one output record per article or image out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from newsdl import defaults as td
from newsdl.errors import UserError
from newsdl.tasks.layout import CONFIG, MODEL

log = logging.getLogger("newsdl.tasks")
# Options of train that only some tasks have, with the CLI's spelling.
TASK_OPTIONS = ("head", "context", "beam")


@dataclass
class Data:
    """One training run's material, row-aligned: inputs, targets and per-example loss weights,
    the rows of each split, and what was fitted on train."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]  # train, val, test
    weight: np.ndarray | None = None  # per-example loss weight, None: all 1
    fitted: dict = field(default_factory=dict)  # objects the model and the saved files are made from
    record: dict = field(default_factory=dict)  # their JSON description, for config.json
    summary: dict = field(default_factory=dict)  # what train reports beyond counts (features, ...)


@dataclass
class Saved:
    """A trained model's folder, read back: its config and what was fitted."""

    folder: Path
    config: dict
    fitted: dict


@dataclass
class Batch:
    """Where a replica's examples sit in the global batch, for losses over the whole batch
    (illustrate's contrastive loss): ``gather`` concatenates a tensor over the replicas."""

    offset: object = 0  # a scalar tensor while training
    gather: Callable = lambda t: t  # one replica: the batch is all there is


class Task:
    """Base class: set the attributes, implement the methods, add the module to tasks.REGISTRY."""

    name = ""
    unit = "articles"  # what one training example is, in logs and summaries
    test_unit = ""  # what one test example is, when not a training example
    epochs, batch_size, lr, patience = td.EPOCHS, td.BATCH_SIZE, td.LEARNING_RATE, td.PATIENCE
    lr_half_life: int | None = td.LR_HALF_LIFE  # epochs per halving of Adam's step; None: constant
    clipnorm: float | None = None
    monitor, mode, min_delta = "val_loss", "min", 1e-3  # early stopping and the best epoch
    metric_keys: tuple = ()  # the SPEC's test metrics, in metrics.json's order
    main_metric, higher_is_better = "", True  # the metric the model must win on
    options: dict = {}  # the TASK_OPTIONS this task has, with their defaults
    eval_options: tuple = ()  # of those, the ones evaluate and predict take too
    predict_options: dict = {}  # options only predict takes, with their defaults
    features = False  # whether --features applies
    files: tuple = ()  # what train writes beside the model and config.json, for evaluate and predict
    val_outputs: tuple = ()  # model outputs that validate() reads

    # ---------------------------------------------------------------- train

    def settings(self, ws: Path, **given) -> dict:
        """The training settings, defaults filled in and checked (UserError names the option)."""
        for name in TASK_OPTIONS:
            if given.get(name) is not None and name not in self.options:
                raise UserError(f"--{name} {given[name]}: {self.name} has no such option")
        if given.get("features") not in (None, "", []) and not self.features:
            raise UserError(f"--features {given['features']}: {self.name} always reads the image's FC7 and "
                            f"the article's word2vec mean and max")
        s = {k: getattr(self, k) if given.get(k) is None else type(getattr(self, k))(given[k])
             for k in ("epochs", "batch_size", "lr", "patience")}
        s["seed"] = td.SEED if given.get("seed") is None else int(given["seed"])
        for name in ("epochs", "batch_size", "patience"):
            if s[name] < 1:
                raise UserError(f"--{name.replace('_', '-')} {s[name]}: must be at least 1")
        if not 0 < s["lr"] < 10:
            raise UserError(f"--lr {s['lr']}: must be in (0, 10)")
        for name, default in self.options.items():
            s[name] = self.check_option(name, default if given.get(name) is None else given[name])
        return s

    def model_config(self) -> dict:
        """Defaults the model is built with, beyond the settings: in the config, so a change retrains."""
        return {}

    def use_options(self, given: dict, saved: "Saved | None" = None) -> dict:
        """evaluate's and predict's options (``eval_options``), checked; one not given is the one
        the model was trained with (without ``saved``: only their names are checked)."""
        for name, value in given.items():
            if value is not None and name not in self.eval_options:
                raise UserError(f"--{name} {value}: {self.name} has no such option")
        return {} if saved is None else {k: self.check_option(k, saved.config.get(k) if given.get(k) is None
                                                               else given[k]) for k in self.eval_options}

    def predict_settings(self, given: dict) -> dict:
        """predict's own options (``predict_options``), defaults filled in and checked."""
        for name, value in given.items():
            if value is not None and name not in self.predict_options:
                raise UserError(f"--{name} {value}: {self.name} has no such option")
        return {k: self.check_option(k, default if given.get(k) is None else given[k])
                for k, default in self.predict_options.items()}

    def check_option(self, name: str, value):
        """A task option's value, checked (UserError when it is not one of the allowed)."""
        return value

    def heads(self, s: dict) -> list[str]:
        """The model variants one training trains, the best on val kept."""
        return ["default"]

    def load(self, ws: Path, s: dict) -> Data:
        raise NotImplementedError

    def build(self, data: Data, s: dict, head: str):
        raise NotImplementedError

    def losses(self, y: dict, pred: dict, batch: Batch) -> dict:
        """Each example's loss terms ([B] tensors): "loss" (what is minimised), and its parts
        by output name when there are several."""
        raise NotImplementedError

    def validate(self, data: Data, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Val values beyond the losses, from the model's ``val_outputs`` on the val rows."""
        return {}

    def save(self, folder: Path, data: Data) -> list[str]:
        """Write what was fitted on train into ``folder``; the names written."""
        return []

    def calibrate(self, data: Data, model, s: dict) -> dict:
        """What is fitted on val after training, from the chosen model (a fusion weight, a
        temperature, a decision threshold): JSON, kept in config.json's ``fitted`` as
        "calibration", so evaluate and predict decode with it. {}: nothing."""
        return {}

    # ---------------------------------------------------------------- evaluate, predict

    def restore(self, folder: Path, config: dict, ws: Path) -> dict:
        """The fitted objects of a saved model (read from ``files``), checked against ``ws``."""
        return dict(config.get("fitted", {}))

    def evaluate(self, ws: Path, saved: Saved, **options) -> tuple[dict, list[str]]:
        """Test scores: ({"n_train", "n_test", "n_val", "scores": {"model": ..., baseline: ...},
        "model": details, "baseline_params", ...}, plot files)."""
        raise NotImplementedError

    def predict(self, ws: Path, saved: Saved, table, root: Path, source: Path, **options):
        """(one record per article or image of ``table``, the images rejected)."""
        raise NotImplementedError

    def load_model(self, path: Path):
        """A saved model, loaded in safe mode (no code from the file runs); not compiled."""
        import keras

        from newsdl.tasks import models  # noqa: F401  (registers the layers every trunk uses)

        return keras.models.load_model(path, safe_mode=True, compile=False)


def split_rows(split: np.ndarray, labelled: np.ndarray, seed: int, groups: np.ndarray | None = None,
               unit: str = "articles") -> dict[str, np.ndarray]:
    """Labelled rows of each ingest split. Without any val row, a fixed tenth of train's ``groups``
    (the articles, whose images must not straddle train and val; default: each row its own) is held
    out for early stopping (and said so), because stopping on train would never stop."""
    rows = {s: np.flatnonzero(labelled & (split == s)) for s in ("train", "val", "test")}
    if len(rows["train"]) < td.MIN_TRAIN:
        raise UserError(f"{len(rows['train'])} labelled {unit} in the train split, and training needs at least "
                        f"{td.MIN_TRAIN}; check field 'split' and the task's label field")
    if len(rows["val"]) == 0:
        keys = rows["train"] if groups is None else groups[rows["train"]]
        distinct = np.unique(keys)
        held = np.isin(keys, np.random.default_rng(seed).permutation(distinct)[:max(1, len(distinct) // 10)])
        rows["val"], rows["train"] = rows["train"][held], rows["train"][~held]
        log.warning("no labelled example in the val split: holding out %d training %s for early stopping",
                    len(rows["val"]), unit)
    return rows


def read_saved(ws: Path, task: Task) -> Saved:
    """The trained model of ``task`` in ``ws``: refused when missing, damaged or stale."""
    from newsdl.tasks.data import check_model

    folder = ws / "models" / task.name
    for name in (CONFIG, MODEL, *task.files):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: no trained {task.name} model ({name} missing); run "
                            f"`newsdl train {task.name} -w {ws}` first")
    check_model(ws, folder, task.name)
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    return Saved(folder, config, task.restore(folder, config, ws))

