"""source: which outlet published the article.

Outlets are seldom balanced (BreakingNews: 4x between the largest and the smallest), so
training weighs each class by n / (classes x its count): the loss of a rare outlet counts as
much as a common one's in total.
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
    min_delta = td.MIN_DELTA["source"]

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
        """Logistic regression on the model's wide inputs: where its wide path starts."""
        from newsdl.tasks.baselines import fit_wide_logreg

        y = _index(corpus, fitted["classes"])
        keep = {k: v[y[v] >= 0] for k, v in rows.items()}
        bow_rows = fitted["bow_terms"] + 1 if "bow" in features else None
        return fit_wide_logreg(x, features, keep, y, len(fitted["classes"]), bow_rows,
                               td.LOGREG_C if len(keep["val"]) else (1.0,))

    def build(self, data, s, head):
        import keras

        from newsdl.tasks.models import build_trunk, head_output

        train_x = {k: v[data.rows["train"]] for k, v in data.x.items()}
        inputs, h, wide = build_trunk(s["features"], train_x, data.fitted)
        logits = head_output(h, wide, len(data.fitted["classes"]), "source", data.fitted.get("wide_init"))
        return keras.Model(inputs, {"source": keras.layers.Activation("softmax", name="source")(logits)},
                           name="source")

    def losses(self, y, pred, batch):
        import keras

        return {"loss": keras.losses.sparse_categorical_crossentropy(y["source"], pred["source"])}

    def decode(self, outputs, fitted):
        return {"probs": np.asarray(outputs["source"], float)}

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


def labels(pred, fitted) -> np.ndarray:
    return np.asarray(fitted["classes"], dtype=object)[np.argmax(pred["probs"], axis=1)]


TASK = Source()
