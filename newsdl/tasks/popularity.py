"""popularity: how many comments (and shares, where the corpus has them) a story draws.

Counts are heavy-tailed, so the targets are log1p(count) and the loss is Huber on them: a viral
outlier moves the fit linearly, not quadratically. Shares are a second output, trained only on
articles that have them (absent targets add no loss); the SPEC's metrics are on comments.

Besides the text features, the model reads what a newsroom knows before publication
(tasks/prepub.py): the outlet, the publication hour and weekday, the headline's and the article's
length, and the headline's character 2-5-grams. The model is wide and deep:
- wide: one linear model on everything (the standardised word-vector and image features, the
  word TF-IDF bag, the outlet, hour and weekday ids, the lengths, the headline's n-gram TF-IDF),
  fitted in closed form as a ridge on train (alpha, and the weight of the outlet, time and length
  blocks against the bags, chosen on val by Spearman) and frozen;
- deep: the shared trunk's representation, beside a small dense layer over embeddings of the
  outlet, hour and weekday and the lengths; its output layer starts at zero, so training starts
  at the ridge and early stopping keeps what the deep part adds to it.
"""

from __future__ import annotations

import numpy as np

from newsdl import defaults as td
from newsdl.errors import UserError
from newsdl.tasks import metrics as M
from newsdl.tasks import prepub
from newsdl.tasks.articles import ArticleTask, restore_fitted

# The pre-publication blocks whose weight against the bags is tried on val (the headline's
# n-grams are a bag like the words, at weight 1). The lengths are three columns of unit variance,
# so their weight is divided by sqrt(3): every block then starts at about unit norm per article.
WEIGHTED = {"outlet": 1.0, "hour": 1.0, "weekday": 1.0, "lengths": 1.0 / np.sqrt(len(prepub.LENGTHS))}


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
        described, chars = prepub.fit(corpus, train_rows)
        # The n-gram vectorizer is no JSON: load() keeps it out of config.json, save() writes it.
        return {"targets": names, "target_stats": stats, **described, "headline_chars": chars}

    def load(self, ws, s):
        data = super().load(ws, s)
        data.record.pop("headline_chars")
        data.record["headline_char_terms"] = len(data.fitted["headline_chars"].vocabulary_)
        data.record["wide_init"] = {name: {"alpha": part["alpha"], "weights": part["weights"]}
                                    for name, part in data.fitted.get("wide_init", {}).items()}
        return data

    def save(self, folder, data):
        prepub.save_chars(data.fitted["headline_chars"], folder / prepub.HEADLINE_CHARS_FILE)
        return super().save(folder, data) + [prepub.HEADLINE_CHARS_FILE]

    def restore(self, folder, config, ws):
        fitted = restore_fitted(folder, config, ws)
        path = folder / prepub.HEADLINE_CHARS_FILE
        if not path.is_file():
            raise UserError(f"{path}: missing; retrain with `newsdl train {config['task']} --force`")
        fitted["headline_chars"] = prepub.load_chars(path)
        return fitted

    def task_inputs(self, corpus, fitted):
        return prepub.inputs(corpus, fitted)

    def targets(self, corpus, fitted, x):
        return {name: np.log1p(getattr(corpus, name)).astype(np.float32)[:, None] for name in fitted["targets"]}

    def wide_init(self, corpus, x, features, rows, fitted):
        """Ridge on the model's wide inputs and the pre-publication ones, per target: where its
        wide path starts."""
        from newsdl.tasks.baselines import fit_wide_ridge

        z = {}
        for name in fitted["targets"]:
            mean, std = fitted["target_stats"][name]
            z[name] = (np.log1p(getattr(corpus, name)) - mean) / std
        bow_rows = fitted["bow_terms"] + 1 if "bow" in features else None
        weightings = [{name: w * scale for name, scale in WEIGHTED.items()} for w in td.PREPUB_WEIGHTS]
        return fit_wide_ridge(x, features, rows, z, bow_rows, td.RIDGE_ALPHA, prepub.wide_blocks(x, fitted),
                              weightings)

    def build(self, data, s, head):
        import keras

        from newsdl.tasks.models import build_trunk, head_output

        train_x = {k: v[data.rows["train"]] for k, v in data.x.items()}
        inputs, h, wide = build_trunk(s["features"], train_x, data.fitted)
        sizes = prepub.vocab_sizes(data.fitted)
        for name in ("outlet", "hour", "weekday"):
            inputs[name] = keras.Input(shape=(1,), dtype="int32", name=name)
        inputs["lengths"] = keras.Input(shape=(len(prepub.LENGTHS),), name="lengths")
        inputs["char_ids"] = keras.Input(shape=(train_x["char_ids"].shape[1],), dtype="int32", name="char_ids")
        inputs["char_w"] = keras.Input(shape=(train_x["char_w"].shape[1],), name="char_w")

        # Deep: the outlet, hour and weekday as learned embeddings with the lengths, one dense
        # layer, beside the trunk's representation.
        dims = {"outlet": td.PREPUB_OUTLET_DIM, "hour": td.PREPUB_OUTLET_DIM // 4, "weekday": td.PREPUB_OUTLET_DIM // 4}
        parts = [keras.layers.Flatten(name=f"{name}_flat")(keras.layers.Embedding(
            sizes[name], dim, name=f"{name}_embedding", embeddings_regularizer=keras.regularizers.L2(td.L2))(
            inputs[name])) for name, dim in dims.items()]
        known = keras.layers.Concatenate(name="prepub_concat")(parts + [inputs["lengths"]])
        known = keras.layers.Dense(td.BRANCH, activation="relu", name="prepub_dense",
                                   kernel_regularizer=keras.regularizers.L2(td.L2))(known)
        known = keras.layers.Dropout(td.DROPOUT, name="prepub_dropout")(known)
        h = keras.layers.Concatenate(name="with_prepub")([h, known])

        outputs = {}
        for name in data.fitted["targets"]:
            mean, std = data.fitted["target_stats"][name]
            init = (data.fitted.get("wide_init") or {}).get(name)
            # Standardised inside, log1p units outside: the output starts at the training mean.
            z = head_output(h, wide, 1, f"{name}_z", init)
            z = keras.layers.Add(name=f"{name}_z_all")([z, *_prepub_wide(inputs, sizes, name, init)])
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

    def calibrate(self, data, model, s):
        """Duan's smearing factor per target, on val: the mean of exp(residual) in log1p units.
        exp(prediction) x factor - 1 is then the expected count, where expm1(prediction) alone
        is closer to the median and under-counts a heavy tail."""
        va = data.rows["val"]
        if len(va) == 0:
            return {}
        out = self.val_outputs_of(data, model, s)
        factors = {}
        for name in data.fitted["targets"]:
            truth = np.asarray(data.y[name], float).reshape(-1)[va]
            guess = np.asarray(out[name], float).reshape(-1)
            known = ~np.isnan(truth)
            if known.any():
                factors[f"{name}_smearing"] = round(float(np.mean(np.exp(truth[known] - guess[known]))), 4)
        return factors

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

        # The ridge beside the model: how much the network adds over a linear fit of its features.
        ridge = {"ridge": preds["ridge"]["comments"]} if "ridge" in preds else None
        return [plots.predicted_vs_true(folder / "predicted_vs_true.png", np.log1p(corpus.comments),
                                        preds["model"]["comments"], ridge)]

    def records(self, ids, pred, fitted):
        out = []
        for row, i in enumerate(ids):
            rec = {"id": i}
            for name in fitted["targets"]:
                v = float(pred[name][row])
                factor = (fitted.get("calibration") or {}).get(f"{name}_smearing", 1.0)
                rec[f"log1p_{name}"] = round(v, 4)
                # The expected count (see calibrate), a whole number, never below zero.
                rec[name] = int(round(max(float(np.exp(v)) * factor - 1.0, 0.0)))
            out.append(rec)
        return out


def _prepub_wide(inputs: dict, sizes: dict, target: str, init: dict | None) -> list:
    """The wide path's terms for the pre-publication inputs, one per block: each holds the ridge's
    coefficients of that block (frozen), or learns from zero under L2 without a ridge fit."""
    import keras

    blocks = (init or {}).get("blocks")
    penalty = None if blocks else keras.regularizers.L2(td.L2)
    layers, terms = {}, []
    for name in ("outlet", "hour", "weekday", "char_ids"):
        layers[name] = keras.layers.Embedding(sizes[name], 1, name=f"{target}_wide_{name}", trainable=not blocks,
                                              embeddings_initializer="zeros", embeddings_regularizer=penalty)
    for name in ("outlet", "hour", "weekday"):
        terms.append(keras.layers.Flatten(name=f"{target}_wide_{name}_flat")(layers[name](inputs[name])))
    terms.append(keras.layers.Dot(axes=1, name=f"{target}_wide_char_bag")(
        [inputs["char_w"], layers["char_ids"](inputs["char_ids"])]))
    layers["lengths"] = keras.layers.Dense(1, use_bias=False, name=f"{target}_wide_lengths", trainable=not blocks,
                                           kernel_initializer="zeros", kernel_regularizer=penalty)
    terms.append(layers["lengths"](inputs["lengths"]))
    if blocks:
        for name, layer in layers.items():
            layer.set_weights([np.asarray(blocks[name], np.float32)])
    return terms


TASK = Popularity()
