"""popularity: how many comments (and shares, where the corpus has them) a story draws.

Counts are heavy-tailed, so the targets are log1p(count) and the loss is Huber on them: a viral
outlier moves the fit linearly, not quadratically. Shares are a second output, trained only on
articles that have them (MaskedHuber); the SPEC's metrics are on comments.
"""

from __future__ import annotations

import numpy as np

from newsdl import defaults as td
from newsdl.tasks import metrics as M

NAME = "popularity"


def labelled(corpus) -> np.ndarray:
    return ~np.isnan(corpus.comments)


def fit(corpus, train_rows, seed: int) -> dict:
    names = ["comments"]
    if np.any(~np.isnan(corpus.shares[train_rows])):
        names.append("shares")
    stats = {}
    for name in names:
        y = np.log1p(getattr(corpus, name)[train_rows])
        y = y[~np.isnan(y)]
        stats[name] = [float(y.mean()), float(max(y.std(), 1e-3))]
    return {"targets": names, "target_stats": stats}


def targets(corpus, fitted, head, x) -> dict:
    return {name: np.log1p(getattr(corpus, name)).astype(np.float32)[:, None] for name in fitted["targets"]}


def sample_weight(corpus, fitted, train_rows):
    return None


def wide_init(corpus, x, features, rows, fitted) -> dict:
    """Ridge on the model's wide inputs, per target: where its wide path starts (models.head_output)."""
    from newsdl.tasks.baselines import fit_wide_ridge

    z = {}
    for name in fitted["targets"]:
        mean, std = fitted["target_stats"][name]
        z[name] = (np.log1p(getattr(corpus, name)) - mean) / std
    bow_rows = fitted["bow_terms"] + 1 if "bow" in features else None
    return fit_wide_ridge(x, features, rows, z, bow_rows, td.RIDGE_ALPHA)


def build(features, train_inputs, fitted, head):
    from newsdl.tasks.models import build_popularity

    return build_popularity(features, train_inputs, fitted)


def compile_model(model, lr, fitted, head) -> str:
    import keras

    from newsdl.tasks.models import MaskedHuber

    losses = {name: MaskedHuber() for name in fitted["targets"]}
    weights = {name: (1.0 if name == "comments" else td.SHARES_WEIGHT) for name in fitted["targets"]}
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=losses, loss_weights=weights, jit_compile=False)
    return "val_comments_loss" if len(losses) > 1 else "val_loss"


def predict(model, dataset, fitted) -> dict:
    out = model.predict(dataset, verbose=0)
    return {name: np.asarray(out[name], float).reshape(-1) for name in fitted["targets"]}


def score(corpus, pred, fitted) -> dict:
    return M.popularity_metrics(np.log1p(corpus.comments), pred["comments"])


def val_score(corpus, pred, fitted) -> float:
    """Lower is better: minus the val Spearman."""
    return -score(corpus, pred, fitted)["spearman"]


def baselines(corpus, inputs, features, rows: dict, fitted) -> dict:
    """The training mean, and ridge regression on the model's features (alpha chosen on val)."""
    from sklearn.linear_model import Ridge

    from newsdl.tasks.baselines import all_features

    tr, va, te = rows["train"], rows["val"], rows["test"]
    y = np.log1p(corpus.comments)
    out = {"mean": {"comments": np.full(len(te), float(np.mean(y[tr])))}}
    X = all_features(corpus, inputs, features, fitted, tr)
    if X is None:
        return out

    def model(alpha):
        return Ridge(alpha=alpha).fit(X[tr], y[tr])

    best = 1.0
    if len(va):
        rho = {a: M.spearman(y[va], model(a).predict(X[va])) for a in td.RIDGE_ALPHA}
        best = max(rho, key=lambda a: (rho[a], a))
    out["ridge"] = {"comments": model(best).predict(X[te]), "params": {"alpha": best}}
    return out


def plots(folder, corpus, preds, fitted) -> list[str]:
    from newsdl.tasks import plots

    return [plots.predicted_vs_true(folder / "predicted_vs_true.png", np.log1p(corpus.comments),
                                    preds["model"]["comments"])]


def records(ids, pred, fitted) -> list[dict]:
    out = []
    for row, i in enumerate(ids):
        rec = {"id": i}
        for name in fitted["targets"]:
            v = float(pred[name][row])
            rec[f"log1p_{name}"] = round(v, 4)
            rec[name] = round(float(np.expm1(max(v, 0.0))), 1)
        out.append(rec)
    return out
