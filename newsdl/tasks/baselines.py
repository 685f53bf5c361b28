"""What the sklearn baselines see: the model's own inputs, as matrices.

"The same features" means the same arrays the network gets, minus the word-id sequences (a
linear model or kNN has no use for word positions): the dense blocks standardised with the
training rows' statistics, each scaled to the same total variance so that 4,096 fc7 numbers do
not drown 300 word-vector ones, and the TF-IDF bag as a sparse matrix.
"""

from __future__ import annotations

import numpy as np

DENSE = {"w2v_mean": ("w2v_mean",), "w2v_max": ("w2v_max",), "fc7": ("fc7", "fc7_mask"),
         "gaz": ("gaz_xyz", "gaz_mask", "gaz_feat")}


def dense_features(inputs: dict, features, train_rows) -> np.ndarray | None:
    blocks = []
    for family, names in DENSE.items():
        if family not in features:
            continue
        block = np.concatenate([inputs[n].reshape(len(inputs[n]), -1) for n in names], axis=1).astype(np.float64)
        mean, std = block[train_rows].mean(axis=0), block[train_rows].std(axis=0)
        block = (block - mean) / np.where(std > 0, std, 1.0)
        blocks.append(block / np.sqrt(block.shape[1]))
    return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else None


def tfidf(corpus, features, fitted, train_rows):
    """The TF-IDF matrix of every article: the model's own (fitted on train) when it reads the bag
    of words, else one fitted on train here with the same settings."""
    from newsdl.tasks.articles import bow_matrix
    from newsdl.tasks.data import fit_bow, words

    if "bow" not in fitted:
        tokens = words(corpus)
        return fit_bow([tokens[i] for i in train_rows]).transform(tokens).tocsr()
    return bow_matrix(corpus, fitted)


def all_features(corpus, inputs: dict, features, fitted, train_rows):
    """Dense blocks and the bag of words side by side (sparse when the bag is there)."""
    from scipy import sparse

    dense = dense_features(inputs, features, train_rows)
    bag = tfidf(corpus, features, fitted, train_rows) if "bow" in features else None
    if bag is None:
        return dense
    if dense is None:
        return bag
    return sparse.hstack([sparse.csr_matrix(dense), bag], format="csr")


# ------------------------------------------------------------------ the model's wide part

WIDE_DENSE = (("w2v_mean",), ("w2v_max",), ("fc7", "fc7_mask"))


def wide_inputs(x: dict, features, train_rows):
    """What the model's wide (linear) path reads, as sklearn matrices: the dense features
    standardised as the model's Normalization layers do (train statistics), the image block
    masked, and the bag of words as the model sees it. Returns (dense or None, bag or None,
    per-block (start, stop) columns, scales)."""
    blocks, scales = [], []
    for names in WIDE_DENSE:
        if names[0] not in features:
            continue
        a = x[names[0]].astype(np.float64)
        rows = train_rows if names[0] != "fc7" else train_rows[x["fc7_mask"][train_rows, 0] > 0]
        mean = a[rows].mean(axis=0) if len(rows) else np.zeros(a.shape[1])
        std = np.maximum(np.sqrt(a[rows].var(axis=0)), 1e-7) if len(rows) else np.ones(a.shape[1])
        a = (a - mean) / std
        if names[0] == "fc7":
            a = np.concatenate([a * x["fc7_mask"], x["fc7_mask"]], axis=1)
        # Each block weighs the same in the penalty whatever its width (see dense_features).
        scale = 1.0 / np.sqrt(a.shape[1])
        blocks.append(a * scale)
        scales.append(np.full(a.shape[1], scale))
    dense = np.concatenate(blocks, axis=1) if blocks else None
    bag = None
    if "bow" in features:
        from scipy import sparse

        ids, w = x["bow_ids"], x["bow_w"]
        n, width = ids.shape
        rows = np.repeat(np.arange(n), width)
        bag = sparse.csr_matrix((w.ravel(), (rows, ids.ravel())), shape=(n, int(ids.max(initial=0)) + 1))
        bag.eliminate_zeros()
    return dense, bag, (np.concatenate(scales) if scales else None)


def _stack(dense, bag, rows):
    from scipy import sparse

    if bag is None:
        return dense[rows]
    if dense is None:
        return bag[rows]
    return sparse.hstack([sparse.csr_matrix(dense[rows]), bag[rows]], format="csr")


def _split_coef(coef: np.ndarray, dense, scales, n_bow_rows: int | None) -> dict:
    """sklearn coefficients [units, features] -> the wide layers' weights."""
    k = 0 if dense is None else dense.shape[1]
    out = {}
    if dense is not None:
        out["dense"] = (coef[:, :k] * scales[None, :]).T.astype(np.float32)
    if n_bow_rows is not None:
        bow = np.zeros((n_bow_rows, coef.shape[0]), np.float32)
        part = coef[:, k:].T
        bow[:len(part)] = part
        out["bow"] = bow
    return out


def fit_wide_ridge(x, features, rows, targets: dict, bow_rows: int | None, alphas) -> dict:
    """Ridge per target (standardised log counts) on the wide inputs, alpha chosen on val by
    Spearman: the starting point of popularity's wide path. {target: {dense, bow, bias, alpha}}."""
    from sklearn.linear_model import Ridge

    from newsdl.tasks.metrics import spearman

    dense, bag, scales = wide_inputs(x, features, rows["train"])
    out = {}
    for name, z in targets.items():
        tr = rows["train"][~np.isnan(z[rows["train"]])]
        va = rows["val"][~np.isnan(z[rows["val"]])]
        if len(tr) < 2:
            continue
        Xtr, Xva = _stack(dense, bag, tr), _stack(dense, bag, va)
        best, best_rho = None, -np.inf
        for alpha in alphas:
            model = Ridge(alpha=alpha).fit(Xtr, z[tr])
            rho = spearman(z[va], model.predict(Xva)) if len(va) > 1 else 0.0
            if rho > best_rho:
                best, best_rho = model, rho
        out[name] = {**_split_coef(best.coef_[None, :], dense, scales, bow_rows),
                     "bias": np.array([best.intercept_], np.float32), "alpha": float(best.alpha)}
    return out


def fit_wide_logreg(x, features, rows, y: np.ndarray, n_classes: int, bow_rows: int | None, cs) -> dict:
    """Multinomial logistic regression (balanced class weights) on the wide inputs, C chosen on
    val by accuracy: the starting point of source's wide path. {dense, bow, bias, C}."""
    import copy

    from sklearn.linear_model import LogisticRegression

    dense, bag, scales = wide_inputs(x, features, rows["train"])
    tr, va = rows["train"], rows["val"]
    Xtr, Xva = _stack(dense, bag, tr), _stack(dense, bag, va)
    model = LogisticRegression(class_weight="balanced", max_iter=2000, warm_start=True)
    best, best_acc = None, -1.0
    for c in cs:
        model.set_params(C=c).fit(Xtr, y[tr])
        acc = float(np.mean(model.predict(Xva) == y[va])) if len(va) else 0.0
        if acc > best_acc:
            best, best_acc = copy.deepcopy(model), acc
    coef = np.zeros((n_classes, best.coef_.shape[1]))
    bias = np.full(n_classes, -30.0)  # a class absent from train: never predicted
    if len(best.classes_) == 2:  # sklearn's binary case has one row of coefficients
        coef[best.classes_[1]], bias[best.classes_[1]] = best.coef_[0], best.intercept_[0]
        bias[best.classes_[0]] = 0.0
    else:
        coef[best.classes_], bias[best.classes_] = best.coef_, best.intercept_
    return {**_split_coef(coef, dense, scales, bow_rows), "bias": bias.astype(np.float32), "C": float(best.C)}
