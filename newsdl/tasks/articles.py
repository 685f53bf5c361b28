"""The article tasks (geoloc, source, popularity): `ArticleTask`, the Task shape they share.

One article is one example. Its inputs are the feature families the user selects (--features:
word2vec mean and max, the token CNN, the TF-IDF bag of words, the mean FC7 of its images, the
gazetteer's places) through models.build_trunk; what is fitted on train (the TF-IDF vocabulary,
the embedding matrix, the task's own labels and statistics) is recorded in config.json, and the
same functions turn new articles into the same inputs for predict. A task says which rows are
labelled, its targets, its head and losses, its baselines and metrics, and its output records.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from newsdl.errors import UserError
from newsdl import defaults as td
from newsdl.features.text import OOV, PAD
from newsdl.features.bow import bow_arrays, fit_bow, load_bow, save_bow
from newsdl.tasks.data import Corpus, corpus_from_articles, dataset, embedding_matrix, load_corpus, pool, words
from newsdl.tasks.layout import BOW, MODEL
from newsdl.tasks.task import Data, Saved, Task, split_rows

log = logging.getLogger("newsdl.tasks")


def resolve_features(task: str, allowed: tuple[str, ...], requested, available: tuple[str, ...],
                     ws: Path) -> list[str]:
    """``--features``: a comma list of families or groups (text, image); default: every family
    of ``allowed`` that the workspace has."""
    if requested is None or requested == "" or requested == []:
        if not (ws / "features" / "manifest.json").is_file():
            # Training on the bag of words alone, because the features went missing, would hand the
            # user a weaker model than the one they asked for under the same name.
            raise UserError(f"{ws / 'features'}: no finished featurize stage; run `newsdl featurize -w {ws}` "
                            f"first, or choose text-only features explicitly (--features bow)")
        chosen = [f for f in allowed if f in available]
    else:
        chosen = set()
        for name in filter(None, (n.strip() for n in (requested.split(",") if isinstance(requested, str)
                                                        else requested))):
            group = name in td.FEATURE_GROUPS  # a group takes what applies and is there (fc7 must be)
            for f in td.FEATURE_GROUPS.get(name, (name,)):
                if f not in td.FEATURES:
                    raise UserError(f"--features {requested}: unknown feature {name!r}; choose from "
                                    f"{', '.join(td.FEATURES)} or the groups {', '.join(td.FEATURE_GROUPS)}")
                if f not in allowed and not group:
                    raise UserError(f"--features {requested}: {f!r} does not apply to {task}")
                if f in allowed and f not in available and (not group or f == "fc7"):
                    raise UserError(f"--features {requested}: {f!r} is not in {ws / 'features'} "
                                    f"({_why_missing(f)})")
                if f in allowed and f in available:
                    chosen.add(f)
        chosen = [f for f in td.FEATURES if f in chosen]
    if not chosen:
        raise UserError(f"--features {requested}: none of these is available in {ws}")
    return chosen


def _why_missing(feature: str) -> str:
    if feature == "fc7":
        return "no image features: run `newsdl featurize` with images"
    return "no text features: run `newsdl featurize`"


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
        most = int(bow_matrix(corpus, fitted)[train_rows].getnnz(axis=1).max(initial=1))
        fitted["bow_width"] = record["bow_width"] = max(1, min(td.BOW_TERMS, most))
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


def model_inputs(corpus: Corpus, features: list[str], fitted: dict) -> dict[str, np.ndarray]:
    """The arrays the model's named inputs read, for every row of ``corpus``."""
    x = {}
    for name in ("w2v_mean", "w2v_max", "tokens"):
        if name in features:
            x[name] = corpus.arrays[name]
    if "fc7" in features:
        x["fc7"], x["fc7_mask"] = corpus.arrays["fc7"], corpus.arrays["fc7_mask"]
    if "bow" in features:
        # Models from before the width was recorded read 400 terms.
        x.update(bow_arrays(bow_matrix(corpus, fitted), fitted.get("bow_width", 400)))
    if "gaz" in features:
        from newsdl.features.gazetteer import gazetteer

        x.update(gazetteer().features(corpus.texts))
    if "tokens" in x:
        rows = fitted["embedding"].shape[0] if "embedding" in fitted else fitted["embedding_rows"]
        # An id past the embedding would fail the lookup; it can only be a word the model never saw.
        x["tokens"] = np.where(x["tokens"] < rows, x["tokens"], OOV).astype(np.int32)
    return x


def bow_matrix(corpus: Corpus, fitted: dict):
    """The TF-IDF matrix of every article of ``corpus`` (CSR), computed once per corpus and
    vectorizer: the model's bag of words and the linear baselines share it."""
    vec, matrix = corpus.cache.get("bow", (None, None))
    if vec is not fitted["bow"]:
        vec, matrix = fitted["bow"], fitted["bow"].transform(words(corpus)).tocsr()
        corpus.cache["bow"] = vec, matrix
    return matrix


def predict_outputs(model, x: dict, rows: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """The model's named outputs for ``rows``, batch by batch."""
    out = model.predict(dataset(x, {}, rows, batch_size), verbose=0)
    return {k: np.asarray(v) for k, v in out.items()}


class ArticleTask(Task):
    """An article task: subclasses set ``families`` (the features that apply) and implement
    labelled, fit, targets, build, losses, decode, score, baselines, plots and records (and
    wide_init, sample_weight where they have them)."""

    features = True
    families = td.FEATURES[:-1]  # every family but the gazetteer's places

    # ------------------------------------------------------------ what a task implements

    def labelled(self, corpus: Corpus) -> np.ndarray:
        raise NotImplementedError

    def fit(self, corpus: Corpus, train_rows: np.ndarray, seed: int) -> dict:
        """What the task fits on train (classes, cells, target statistics): JSON-able."""
        return {}

    def targets(self, corpus: Corpus, fitted: dict, x: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def sample_weight(self, corpus: Corpus, fitted: dict, train_rows: np.ndarray) -> np.ndarray | None:
        return None

    def wide_init(self, corpus: Corpus, x: dict, features: list[str], rows: dict, fitted: dict) -> dict | None:
        """A linear model fitted in closed form, where the model's wide path starts (models.head_output)."""
        return None

    def decode(self, outputs: dict, fitted: dict) -> dict:
        """The model's outputs as the task's predictions (what score and records read)."""
        raise NotImplementedError

    def task_inputs(self, corpus: Corpus, fitted: dict) -> dict[str, np.ndarray]:
        """Inputs only this task's model reads, beyond the feature families (named arrays, one
        row per article), for training, evaluate and predict alike."""
        return {}

    def inputs(self, corpus: Corpus, features: list[str], fitted: dict) -> dict[str, np.ndarray]:
        return {**model_inputs(corpus, features, fitted), **self.task_inputs(corpus, fitted)}

    def val_outputs_of(self, data: Data, model, s: dict) -> dict[str, np.ndarray]:
        """The chosen model's outputs on the val rows (for calibrate)."""
        return predict_outputs(model, data.x, data.rows["val"], s["batch_size"])

    # ------------------------------------------------------------ the shape, for every article task

    def settings(self, ws: Path, **given) -> dict:
        requested = given.pop("features", None)
        s = super().settings(ws, **given)
        s["features"] = resolve_features(self.name, self.families, requested, load_corpus(ws).available, ws)
        return s

    def load(self, ws: Path, s: dict) -> Data:
        corpus = load_corpus(ws)
        features = s["features"]
        rows = split_rows(corpus.split, self.labelled(corpus), s["seed"])
        own = self.fit(corpus, rows["train"], s["seed"])
        objects, record = fit_inputs(corpus, features, rows["train"], ws)
        fitted = {**own, **objects}
        x = self.inputs(corpus, features, fitted)
        init = self.wide_init(corpus, x, features, rows, fitted)
        if init is not None:
            fitted["wide_init"] = init
            record["wide_init"] = {k: init[k] for k in ("C", "inputs", "val_accuracy") if k in init} if "bias" in init else \
                {name: {"alpha": part.get("alpha")} for name, part in init.items()}
        return Data(x, self.targets(corpus, fitted, x), rows, self.sample_weight(corpus, fitted, rows["train"]),
                    fitted, {**own, **record}, {"features": features})

    def save(self, folder: Path, data: Data) -> list[str]:
        if "bow" not in data.fitted:
            return []
        save_bow(data.fitted["bow"], folder / BOW)
        return [BOW]

    def restore(self, folder: Path, config: dict, ws: Path) -> dict:
        return restore_fitted(folder, config, ws)

    def evaluate(self, ws: Path, saved: Saved, **options) -> tuple[dict, list[str]]:
        corpus = load_corpus(ws)
        features = saved.config["features"]
        missing = [f for f in features if f not in corpus.available]
        if missing:
            raise UserError(f"{ws / 'features'}: the {self.name} model reads {', '.join(missing)}, which this "
                            f"workspace no longer has; rerun `newsdl featurize` or retrain")
        rows = split_rows(corpus.split, self.labelled(corpus), saved.config["seed"])
        if len(rows["test"]) == 0:
            raise UserError(f"{ws / 'ingest' / 'articles.parquet'}: no labelled article in the test split "
                            f"(field 'split'), nothing to evaluate {self.name} on")
        fitted = saved.fitted
        x = self.inputs(corpus, features, fitted)
        model = self.load_model(saved.folder / MODEL)
        preds = {"model": self.decode(predict_outputs(model, x, rows["test"], saved.config["batch_size"]), fitted)}
        preds.update(self.baselines(corpus, x, features, rows, fitted))
        test = corpus.take(rows["test"])

        def resample(idx):  # every system's scores on the test rows ``idx`` (paired_bootstrap)
            sub = test.take(idx)
            return {name: self.score(sub, {k: np.asarray(v)[idx] for k, v in pred.items() if k != "params"}, fitted)
                    for name, pred in preds.items()}

        result = {"n_train": len(rows["train"]), "n_test": len(rows["test"]), "n_val": len(rows["val"]),
                  "scores": {name: self.score(test, pred, fitted) for name, pred in preds.items()},
                  "resample": resample,
                  "model": {"features": features},
                  "baseline_params": {name: p["params"] for name, p in preds.items() if "params" in p}}
        return result, self.plots(saved.folder, test, preds, fitted)

    def predict(self, ws: Path, saved: Saved, table, root: Path, source: Path, **options):
        corpus, x, rejects = featurize(ws, saved, table, root, source)
        x.update(self.task_inputs(corpus, saved.fitted))
        model = self.load_model(saved.folder / MODEL)
        outputs = predict_outputs(model, x, np.arange(len(corpus)), saved.config["batch_size"])
        records = self.records(list(corpus.ids), self.decode(outputs, saved.fitted), saved.fitted)
        return records, rejects, (len(records), "articles")


def featurize(ws: Path, saved: Saved, table, root: Path, source: Path):
    """New articles' input arrays, made as the model's were: (corpus, inputs, images rejected)."""
    corpus = corpus_from_articles(table)
    features = saved.config["features"]
    rejects = []
    if any(f in features for f in ("w2v_mean", "w2v_max", "tokens")):
        from newsdl.features import load_text_featurizer

        feats = load_text_featurizer(ws)(list(table.column("text").to_pylist()),
                                         list(table.column("title").to_pylist()))
        corpus.arrays["w2v_mean"], corpus.arrays["w2v_max"] = feats["w2v_mean"], feats["w2v_max"]
        tokens = np.full((len(corpus), td.CNN_TOKENS), PAD, np.int32)
        width = min(td.CNN_TOKENS, feats["tokens"].shape[1])
        tokens[:, :width] = feats["tokens"][:, :width]
        corpus.arrays["tokens"] = tokens
    if "fc7" in features:
        from newsdl.tasks.multimodal import featurize_images

        owners, _, fc7, rejects = featurize_images(ws, table, root, source, int(saved.config["fitted"]["fc7_dim"]))
        corpus.arrays["fc7"], corpus.arrays["fc7_mask"] = pool(owners, fc7, len(corpus))
    return corpus, model_inputs(corpus, features, saved.fitted), rejects
