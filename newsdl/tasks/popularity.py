"""popularity: how many comments (and shares, where the corpus has them) a story draws.

Counts are heavy-tailed, so the targets are log1p(count) and the loss is Huber on them: a viral
outlier moves the fit linearly, not quadratically. Shares are a second output, trained only on
articles that have them (absent targets add no loss); the SPEC's metrics are on comments.
"""

from __future__ import annotations

import numpy as np

from newsdl import defaults as td
from newsdl.tasks import metrics as M
from newsdl.tasks.articles import ArticleTask


class Popularity(ArticleTask):
    name = "popularity"
    metric_keys = ("spearman", "mae_log")
    main_metric, higher_is_better = "spearman", True
    monitor, min_delta = "val_comments_loss", td.MIN_DELTA["popularity"]

    def labelled(self, corpus):
        return ~np.isnan(corpus.comments)

    def fit(self, corpus, train_rows, seed):
        names = ["comments"] + (["shares"] if np.any(~np.isnan(corpus.shares[train_rows])) else [])
        stats = {}
        for name in names:
            y = np.log1p(getattr(corpus, name)[train_rows])
            y = y[~np.isnan(y)]
            stats[name] = [float(y.mean()), float(max(y.std(), 1e-3))]
        return {"targets": names, "target_stats": stats}

    def targets(self, corpus, fitted, x):
        return {name: np.log1p(getattr(corpus, name)).astype(np.float32)[:, None] for name in fitted["targets"]}

    def wide_init(self, corpus, x, features, rows, fitted):
        """Ridge on the model's wide inputs, per target: where its wide path starts."""
        from newsdl.tasks.baselines import fit_wide_ridge

        z = {}
        for name in fitted["targets"]:
            mean, std = fitted["target_stats"][name]
            z[name] = (np.log1p(getattr(corpus, name)) - mean) / std
        bow_rows = fitted["bow_terms"] + 1 if "bow" in features else None
        return fit_wide_ridge(x, features, rows, z, bow_rows, td.RIDGE_ALPHA)

    def build(self, data, s, head):
        import keras

        from newsdl.tasks.models import build_trunk, head_output

        train_x = {k: v[data.rows["train"]] for k, v in data.x.items()}
        inputs, h, wide = build_trunk(s["features"], train_x, data.fitted)
        outputs = {}
        for name in data.fitted["targets"]:
            mean, std = data.fitted["target_stats"][name]
            # Standardised inside, log1p units outside: the output starts at the training mean.
            z = head_output(h, wide, 1, f"{name}_z", (data.fitted.get("wide_init") or {}).get(name))
            outputs[name] = keras.layers.Rescaling(scale=std, offset=mean, name=name)(z)
        return keras.Model(inputs, outputs, name="popularity")

    def losses(self, y, pred, batch):
        """Huber on log1p(count) per target; shares weigh SHARES_WEIGHT, and count only where known."""
        import tensorflow as tf

        terms = {}
        for name in pred:
            truth, guess = tf.reshape(tf.cast(y[name], tf.float32), [-1]), tf.reshape(pred[name], [-1])
            present = tf.logical_not(tf.math.is_nan(truth))
            err = tf.abs(tf.where(present, truth, 0.0) - tf.where(present, guess, 0.0))
            quad = tf.minimum(err, td.HUBER_DELTA)
            terms[name] = 0.5 * quad * quad + td.HUBER_DELTA * (err - quad)
        loss = terms["comments"] + td.SHARES_WEIGHT * terms.get("shares", 0.0)
        return {"loss": loss, **terms}

    def decode(self, outputs, fitted):
        return {name: np.asarray(outputs[name], float).reshape(-1) for name in fitted["targets"]}

    def score(self, corpus, pred, fitted):
        return M.popularity_metrics(np.log1p(corpus.comments), pred["comments"])

    def baselines(self, corpus, inputs, features, rows, fitted):
        """The training mean, and ridge regression on the model's features (alpha chosen on val)."""
        from sklearn.linear_model import Ridge

        from newsdl.tasks.baselines import all_features, best_on_val

        tr, va, te = rows["train"], rows["val"], rows["test"]
        y = np.log1p(corpus.comments)
        out = {"mean": {"comments": np.full(len(te), float(np.mean(y[tr])))}}
        X = all_features(corpus, inputs, features, fitted, tr)
        if X is None:
            return out

        alpha, model = best_on_val(td.RIDGE_ALPHA if len(va) else (1.0,), lambda a: Ridge(alpha=a).fit(X[tr], y[tr]),
                                   lambda m: M.spearman(y[va], m.predict(X[va])), len(va) > 0)
        out["ridge"] = {"comments": model.predict(X[te]), "params": {"alpha": alpha}}
        return out

    def plots(self, folder, corpus, preds, fitted):
        from newsdl.tasks import plots

        return [plots.predicted_vs_true(folder / "predicted_vs_true.png", np.log1p(corpus.comments),
                                        preds["model"]["comments"])]

    def records(self, ids, pred, fitted):
        out = []
        for row, i in enumerate(ids):
            rec = {"id": i}
            for name in fitted["targets"]:
                v = float(pred[name][row])
                rec[f"log1p_{name}"] = round(v, 4)
                rec[name] = round(float(np.expm1(max(v, 0.0))), 1)
            out.append(rec)
        return out


TASK = Popularity()
