"""What train, evaluate and predict share: the task's module, the selected features, the rows of
each split, the fitted artefacts, and the model's input arrays.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from newsdl.errors import UserError
from newsdl import defaults as td
from newsdl.tasks.data import (OOV_ID, Corpus, bow_arrays, check_model, embedding_matrix, fit_bow, load_bow,
                               save_bow, words)
from newsdl.tasks.layout import BOW, CONFIG, MODEL

log = logging.getLogger("newsdl.tasks")


def task_module(task: str):
    if task not in td.TASKS:
        raise UserError(f"TASK {task!r}: unknown; choose one of {', '.join(td.TASKS)}")
    return importlib.import_module(f"newsdl.tasks.{task}")


def resolve_features(task: str, requested, available: tuple[str, ...], ws: Path) -> list[str]:
    """``--features``: a comma list of families or groups (text, image); default: every family
    the task can use that the workspace has."""
    allowed = td.TASK_FEATURES[task]
    if requested is None or requested == "" or requested == []:
        if not (ws / "features" / "manifest.json").is_file():
            # Training on the bag of words alone, because the features went missing, would hand the
            # user a weaker model than the one they asked for under the same name.
            raise UserError(f"{ws / 'features'}: no finished featurize stage; run `newsdl featurize -w {ws}` "
                            f"first, or choose text-only features explicitly (--features bow)")
        chosen = [f for f in allowed if f in available]
    else:
        names = requested.split(",") if isinstance(requested, str) else list(requested)
        chosen = []
        for name in (n.strip() for n in names):
            if not name:
                continue
            expanded = td.FEATURE_GROUPS.get(name, (name,))
            for f in expanded:
                if f not in td.FEATURES:
                    groups = ", ".join(td.FEATURE_GROUPS)
                    raise UserError(f"--features {requested}: unknown feature {name!r}; choose from "
                                    f"{', '.join(td.FEATURES)} or the groups {groups}")
                if f not in allowed:
                    if name in td.FEATURE_GROUPS:
                        continue  # a group takes what applies
                    raise UserError(f"--features {requested}: {f!r} does not apply to {task}")
                if f not in available:
                    if name in td.FEATURE_GROUPS and f not in ("fc7",):
                        continue  # a group takes what is there
                    raise UserError(f"--features {requested}: {f!r} is not in {ws / 'features'} "
                                    f"({_why_missing(f)})")
                if f not in chosen:
                    chosen.append(f)
        chosen = [f for f in td.FEATURES if f in chosen]
    if not chosen:
        raise UserError(f"--features {requested}: none of these is available in {ws}")
    return chosen


def _why_missing(feature: str) -> str:
    if feature == "fc7":
        return "no image features: run `newsdl featurize` with images"
    return "no text features: run `newsdl featurize`"


def split_rows(corpus: Corpus, labelled: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Labelled rows of each ingest split. Without any val row, a fixed tenth of train is held
    out for early stopping (and said so), because stopping on train would never stop."""
    rows = {s: np.flatnonzero(labelled & (corpus.split == s)) for s in ("train", "val", "test")}
    if len(rows["train"]) < td.MIN_TRAIN:
        raise UserError(f"{len(rows['train'])} labelled articles in the train split, and training needs at least "
                        f"{td.MIN_TRAIN}; check field 'split' and the task's label field")
    if len(rows["val"]) == 0:
        perm = np.random.default_rng(seed).permutation(rows["train"])
        cut = max(1, len(perm) // 10)
        rows["val"], rows["train"] = np.sort(perm[:cut]), np.sort(perm[cut:])
        log.warning("no labelled article in the val split: holding out %d training articles for early stopping",
                    cut)
    return rows


def fit_inputs(corpus: Corpus, features: list[str], train_rows: np.ndarray, ws: Path) -> tuple[dict, dict]:
    """Fit what is fitted on train (the TF-IDF vocabulary) and load the word vectors; returns
    (fitted objects, their JSON-able description for config.json)."""
    fitted, record = {}, {}
    if "fc7" in features:
        record["fc7_dim"] = int(corpus.arrays["fc7"].shape[1])
    if "bow" in features:
        tokens = words(corpus)
        vec = fit_bow([tokens[i] for i in train_rows])
        fitted["bow"] = vec
        fitted["bow_terms"] = len(vec.vocabulary_)
        record["bow_terms"] = len(vec.vocabulary_)
    if "tokens" in features:
        from newsdl.features.vectors import read_vectors
        from newsdl.workspace import sha256_file

        path = ws / "features" / "word2vec.kv"
        kv = read_vectors(path)
        fitted["embedding"] = embedding_matrix(kv)
        record["word2vec_sha256"] = sha256_file(path)
        record["embedding_rows"] = int(fitted["embedding"].shape[0])
    return fitted, record


def restore_fitted(folder: Path, config: dict, ws: Path) -> dict:
    """The fitted objects of a saved model, checked against the workspace it reads."""
    fitted = dict(config.get("fitted", {}))
    if "bow" in config["features"]:
        path = folder / BOW
        if not path.is_file():
            raise UserError(f"{path}: missing; retrain with `newsdl train {config['task']} --force`")
        fitted["bow"] = load_bow(path)
        fitted["bow_terms"] = len(fitted["bow"].vocabulary_)
    if "tokens" in config["features"]:
        from newsdl.workspace import sha256_file

        path = ws / "features" / "word2vec.kv"
        if not path.is_file() or sha256_file(path) != fitted.get("word2vec_sha256"):
            raise UserError(f"{path}: not the word vectors the {config['task']} model was trained with "
                            f"(featurize ran again?); retrain with `newsdl train {config['task']}`")
    return fitted


def save_fitted(folder: Path, fitted: dict) -> None:
    if "bow" in fitted:
        save_bow(fitted["bow"], folder / BOW)


def model_inputs(corpus: Corpus, features: list[str], fitted: dict) -> dict[str, np.ndarray]:
    """The arrays the model's named inputs read, for every row of ``corpus``."""
    x = {}
    for name in ("w2v_mean", "w2v_max", "tokens"):
        if name in features:
            x[name] = corpus.arrays[name]
    if "fc7" in features:
        x["fc7"], x["fc7_mask"] = corpus.arrays["fc7"], corpus.arrays["fc7_mask"]
    if "bow" in features:
        x.update(bow_arrays(bow_matrix(corpus, fitted)))
    if "gaz" in features:
        from newsdl.tasks.gazetteer import gazetteer

        x.update(gazetteer().features(corpus.texts))
    if "tokens" in x:
        rows = fitted["embedding"].shape[0] if "embedding" in fitted else fitted["embedding_rows"]
        # An id past the embedding would fail the lookup; it can only be a word the model never saw.
        x["tokens"] = np.where(x["tokens"] < rows, x["tokens"], OOV_ID).astype(np.int32)
    return x


def bow_matrix(corpus: Corpus, fitted: dict):
    """The TF-IDF matrix of every article of ``corpus`` (CSR), computed once per corpus and
    vectorizer: the model's bag of words and the linear baselines share it."""
    key = ("bow", id(fitted["bow"]))
    if key not in corpus.cache:
        corpus.cache[key] = fitted["bow"].transform(words(corpus)).tocsr()
    return corpus.cache[key]


@dataclass
class Saved:
    """A trained model folder, read back."""

    folder: Path
    config: dict
    fitted: dict

    @property
    def features(self) -> list[str]:
        return self.config["features"]


def read_saved(ws: Path, task: str) -> Saved:
    folder = ws / "models" / task
    path = folder / CONFIG
    if not path.is_file() or not (folder / MODEL).is_file():
        raise UserError(f"{folder}: no trained {task} model; run `newsdl train {task} -w {ws}` first")
    check_model(ws, folder, task)
    config = json.loads(path.read_text(encoding="utf-8"))
    fitted = restore_fitted(folder, config, ws)
    return Saved(folder, config, fitted)
