"""source: which outlet published the article.

- Outlets are seldom balanced (BreakingNews: 4x between the largest and the smallest), so
  training weighs each class by n / (classes x its count): the loss of a rare outlet counts as
  much as a common one's in total.
- The model is wide and deep: its wide path is a TF-IDF logistic regression fitted in closed form
  (frozen), its deep part learns what that misses. Epochs are chosen on val accuracy, the
  metric it is judged on; the untrained model (the linear part alone) is a candidate.
- After training, a late fusion fitted on val: log-probabilities w x deep model + (1 - w) x
  linear part, w on a grid by val accuracy (ties: val log-loss), so that where the deep part does
  not help on val, the model falls back on the linear part. Then temperature scaling (one
  scalar, by val log-loss), since `predict` reports probabilities and a network's are
  overconfident.
"""

from __future__ import annotations

import numpy as np

from newsdl import defaults as td
from newsdl.errors import UserError
from newsdl.tasks import metrics as M
from newsdl.tasks.articles import ArticleTask


class Source(ArticleTask):
    name = "source"
    metric_keys = ("accuracy", "macro_f1")
    main_metric, higher_is_better = "accuracy", True
    monitor, mode, min_delta = "val_accuracy", "max", td.MIN_DELTA["source"]
    patience = td.SOURCE_PATIENCE
    val_outputs = ("source",)

    def labelled(self, corpus):
        return np.array([isinstance(s, str) and s != "" for s in corpus.source], dtype=bool)

    def fit(self, corpus, train_rows, seed):
        classes = sorted({str(s) for s in corpus.source[train_rows]})
        if len(classes) < 2:
            raise UserError(f"source: the training split has {len(classes)} outlet(s) in field 'source'; "
                            f"classifying needs at least 2")
        return {"classes": classes}

    def targets(self, corpus, fitted, x):
        return {"source": np.maximum(_index(corpus, fitted["classes"]), 0)}

    def sample_weight(self, corpus, fitted, train_rows):
        y = _index(corpus, fitted["classes"])
        counts = np.bincount(y[train_rows][y[train_rows] >= 0], minlength=len(fitted["classes"])).astype(float)
        per_class = len(train_rows) / (len(counts) * np.maximum(counts, 1.0))
        return np.where(y >= 0, per_class[np.maximum(y, 0)], 0.0).astype(np.float32)

    def wide_init(self, corpus, x, features, rows, fitted):
        """Logistic regression on the model's wide inputs, where its wide path starts: on every
        wide input, or on the bag of words alone (the dense blocks' weights then 0), whichever
        is more accurate on val. Dense blocks of hundreds of correlated columns beside a sparse
        bag can cost a linear model more than they bring."""
        from newsdl.tasks.baselines import fit_wide_logreg, wide_inputs

        y = _index(corpus, fitted["classes"])
        keep = {k: v[y[v] >= 0] for k, v in rows.items()}
        bow_rows = fitted["bow_terms"] + 1 if "bow" in features else None
        cs = td.LOGREG_C if len(keep["val"]) else (1.0,)
        every = fit_wide_logreg(x, features, keep, y, len(fitted["classes"]), bow_rows, cs)
        every["inputs"] = "all"
        if "bow" not in features or "dense" not in every or not len(keep["val"]):
            return every
        bag = fit_wide_logreg(x, ["bow"], keep, y, len(fitted["classes"]), bow_rows, cs)
        if bag["val_accuracy"] < every["val_accuracy"]:
            return every
        dense, _, _ = wide_inputs(x, features, keep["train"])
        return {**bag, "dense": np.zeros((dense.shape[1], len(fitted["classes"])), np.float32), "inputs": "bow"}

    def build(self, data, s, head):
        import keras

        from newsdl.tasks.models import build_trunk, head_output

        train_x = {k: v[data.rows["train"]] for k, v in data.x.items()}
        inputs, h, wide = build_trunk(s["features"], train_x, data.fitted)
        init = data.fitted.get("wide_init")
        logits, linear = head_output(h, wide, len(data.fitted["classes"]), "source", init, with_linear=True)
        outputs = {"source": keras.layers.Activation("softmax", name="source")(logits)}
        if init is not None and linear is not None:  # the frozen linear part's logits, for the fusion
            outputs["linear"] = keras.layers.Activation("linear", name="linear")(linear)
        return keras.Model(inputs, outputs, name="source")

    def losses(self, y, pred, batch):
        import keras

        return {"loss": keras.losses.sparse_categorical_crossentropy(y["source"], pred["source"])}

    def validate(self, data, outputs):
        va = data.rows["val"]
        return {"val_accuracy": float(np.mean(np.argmax(outputs["source"], axis=1) == data.y["source"][va]))}

    def calibrate(self, data, model, s):
        """The fusion weight and the temperature, fitted on val (see the module's docstring)."""
        va = data.rows["val"]
        init = data.fitted.get("wide_init")
        if len(va) == 0:
            return {}
        out = self.val_outputs_of(data, model, s)
        y = data.y["source"][va]
        keep = _index_known(y, out["source"].shape[1])
        deep, y = np.log(np.maximum(out["source"][keep], 1e-12)), y[keep]
        linear = None
        if "linear" in out and init is not None:
            linear = out["linear"][keep] + np.asarray(init["bias"], float)[None, :]
        weight, temperature = fit_fusion(deep, linear, y)
        calibration = {"deep_weight": weight, "temperature": temperature}
        if linear is not None:
            calibration["linear_bias"] = [float(b) for b in init["bias"]]
        return calibration

    def decode(self, outputs, fitted):
        probs = np.asarray(outputs["source"], float)
        c = fitted.get("calibration")
        if not c:
            return {"probs": probs}
        z = c["deep_weight"] * np.log(np.maximum(probs, 1e-12))
        if "linear" in outputs and "linear_bias" in c:
            z = z + (1.0 - c["deep_weight"]) * (np.asarray(outputs["linear"], float) + np.asarray(c["linear_bias"]))
        return {"probs": _softmax(z / c["temperature"])}

    def score(self, corpus, pred, fitted):
        y_pred = pred["label"] if "label" in pred else labels(pred, fitted)
        return M.source_metrics(corpus.source.astype(str), y_pred)

    def baselines(self, corpus, inputs, features, rows, fitted):
        """Majority class, and TF-IDF word 1-2 grams + logistic regression (C chosen on val)."""
        from newsdl.tasks.baselines import logreg_on_val, tfidf

        tr, va, te = rows["train"], rows["val"], rows["test"]
        y = corpus.source.astype(str)
        values, counts = np.unique(y[tr], return_counts=True)
        out = {"majority": {"label": np.full(len(te), values[np.argmax(counts)], dtype=object)}}
        X = tfidf(corpus, features, fitted, tr)
        c, best = logreg_on_val(X[tr], y[tr], X[va], y[va], td.LOGREG_C if len(va) else (1.0,))
        out["tfidf_logreg"] = {"label": best.predict(X[te]), "params": {"C": c}}
        return out

    def plots(self, folder, corpus, preds, fitted):
        from newsdl.tasks import plots

        return [plots.confusion(folder / "confusion.png", corpus.source.astype(str),
                                labels(preds["model"], fitted), fitted["classes"])]

    def records(self, ids, pred, fitted):
        classes = fitted["classes"]
        out = []
        for i, p in zip(ids, pred["probs"]):
            best = int(np.argmax(p))
            out.append({"id": i, "source": classes[best], "probability": round(float(p[best]), 4),
                        "probabilities": {c: round(float(q), 4) for c, q in zip(classes, p)}})
        return out


def _index(corpus, classes) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    # An outlet never seen in training cannot be predicted; -1 keeps it out of the loss.
    return np.array([lookup.get(s, -1) if isinstance(s, str) else -1 for s in corpus.source], np.int32)


def _index_known(y: np.ndarray, n_classes: int) -> np.ndarray:
    return (y >= 0) & (y < n_classes)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 that minimises the log-loss of softmax(z / T) (Guo et al. 2017), on a log scale."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda t: _log_loss(z / np.exp(t), y), bounds=(np.log(0.05), np.log(20.0)),
                          method="bounded")
    return float(np.exp(res.x))


def fit_fusion(deep: np.ndarray, linear: np.ndarray | None, y: np.ndarray) -> tuple[float, float]:
    """(w, T): w x deep + (1 - w) x linear log-scores, w in FUSION_WEIGHTS by accuracy, ties
    broken by the log-loss after temperature scaling; T for the chosen w. Without a linear
    part, w is 1 and only T is fitted."""
    candidates = td.FUSION_WEIGHTS if linear is not None else (1.0,)
    best = None
    for w in candidates:
        z = w * deep + ((1.0 - w) * linear if linear is not None else 0.0)
        t = fit_temperature(z, y)
        key = (float(np.mean(np.argmax(z, axis=1) == y)), -_log_loss(z / t, y))
        if best is None or key > best[0]:
            best = (key, float(w), round(t, 4))
    return best[1], best[2]


def labels(pred, fitted) -> np.ndarray:
    return np.asarray(fitted["classes"], dtype=object)[np.argmax(pred["probs"], axis=1)]


TASK = Source()
