"""What the sklearn baselines see: the model's own inputs, as matrices; and how every knob is
tuned on val.

"The same features" means the same arrays the network gets, minus the word-id sequences (a
linear model or kNN has no use for word positions): the dense blocks (dense_blocks) and the
TF-IDF bag as a sparse matrix.
"""

from __future__ import annotations

import numpy as np

from newsdl.tasks.data import floored_variance


def best_on_val(candidates, fit, score, has_val: bool = True):
    """The (candidate, model) whose model, fitted on train by ``fit(candidate)``, scores highest on
    val by ``score(model)`` (the first on ties; without val, the first candidate's): every
    baseline's knob and the model's linear start are tuned alike, each given the same chance."""
    best = None
    for candidate in candidates if has_val else candidates[:1]:
        model = fit(candidate)
        value = score(model) if has_val else 0.0
        if best is None or value > best[2]:
            best = (candidate, model, value)
    return best[0], best[1]


BLOCKS = {"w2v_mean": ("w2v_mean",), "w2v_max": ("w2v_max",), "fc7": ("fc7",),
          "gaz": ("gaz_xyz", "gaz_mask", "gaz_feat")}


def dense_blocks(x: dict, features, train_rows) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The dense features as the model's Normalization layers see them (standardised with the
    training rows' statistics, clamped to their range; the image block over the articles that have images, then masked,
    with the mask beside it), each block scaled to the same total variance so that 4,096 fc7
    numbers do not drown 300 word-vector ones. Returns (matrix, each column's scale), or Nones."""
    blocks, scales = [], []
    for family in (f for f in BLOCKS if f in features):
        a = np.concatenate([x[n].reshape(len(x[n]), -1) for n in BLOCKS[family]], axis=1).astype(np.float64)
        rows = train_rows if family != "fc7" else train_rows[x["fc7_mask"][train_rows, 0] > 0]
        mean = a[rows].mean(axis=0) if len(rows) else np.zeros(a.shape[1])
        std = np.sqrt(floored_variance(a[rows].var(axis=0))) if len(rows) else np.ones(a.shape[1])
        if len(rows):  # clamped to the training range, as models.RangedNormalization does
            a = np.clip(a, a[rows].min(axis=0), a[rows].max(axis=0))
        a = (a - mean) / std
        if family == "fc7":
            a = np.concatenate([a * x["fc7_mask"], x["fc7_mask"]], axis=1)
        blocks.append(a / np.sqrt(a.shape[1]))
        scales.append(np.full(a.shape[1], 1.0 / np.sqrt(a.shape[1])))
    return (np.concatenate(blocks, axis=1), np.concatenate(scales)) if blocks else (None, None)


def dense_features(inputs: dict, features, train_rows) -> np.ndarray | None:
    dense, _ = dense_blocks(inputs, features, train_rows)
    return None if dense is None else dense.astype(np.float32)


def tfidf(corpus, features, fitted, train_rows):
    """The TF-IDF matrix of every article: the model's own (fitted on train) when it reads the bag
    of words, else one fitted on train here with the same settings."""
    from newsdl.tasks.articles import bow_matrix
    from newsdl.features.bow import fit_bow
    from newsdl.tasks.data import words

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

def wide_inputs(x: dict, features, train_rows):
    """What the model's wide (linear) path reads, as sklearn matrices: the dense blocks (without
    the gazetteer's, which only the deep part reads) and the bag of words as the model sees it.
    Returns (dense or None, bag or None, each dense column's scale)."""
    dense, scales = dense_blocks(x, [f for f in features if f != "gaz"], train_rows)
    bag = None
    if "bow" in features:
        from scipy import sparse

        ids, w = x["bow_ids"], x["bow_w"]
        n, width = ids.shape
        rows = np.repeat(np.arange(n), width)
        bag = sparse.csr_matrix((w.ravel(), (rows, ids.ravel())), shape=(n, int(ids.max(initial=0)) + 1))
        bag.eliminate_zeros()
    return dense, bag, scales


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


def fit_wide_logreg(x, features, rows, y: np.ndarray, n_classes: int, bow_rows: int | None, cs) -> dict:
    """Multinomial logistic regression (balanced class weights) on the wide inputs, C chosen on
    val by accuracy: the starting point of source's wide path. {dense, bow, bias, C, val_accuracy}."""
    dense, bag, scales = wide_inputs(x, features, rows["train"])
    tr, va = rows["train"], rows["val"]
    Xva = _stack(dense, bag, va)
    _, best = logreg_on_val(_stack(dense, bag, tr), y[tr], Xva, y[va], cs)
    val_accuracy = float(np.mean(best.predict(Xva) == y[va])) if len(va) else float("nan")
    coef = np.zeros((n_classes, best.coef_.shape[1]))
    bias = np.full(n_classes, -30.0)  # a class absent from train: never predicted
    if len(best.classes_) == 2:  # sklearn's binary case has one row of coefficients
        coef[best.classes_[1]], bias[best.classes_[1]] = best.coef_[0], best.intercept_[0]
        bias[best.classes_[0]] = 0.0
    else:
        coef[best.classes_], bias[best.classes_] = best.coef_, best.intercept_
    return {**_split_coef(coef, dense, scales, bow_rows), "bias": bias.astype(np.float32), "C": float(best.C),
            "val_accuracy": val_accuracy}


def logreg_on_val(Xtr, ytr, Xva, yva, cs):
    """(C, model): logistic regression with balanced class weights, C chosen on val accuracy;
    each C starts from the previous solution (warm start), so the search costs about one fit."""
    import copy

    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(class_weight="balanced", max_iter=2000, warm_start=True)
    return best_on_val(tuple(cs), lambda c: copy.deepcopy(model.set_params(C=c).fit(Xtr, ytr)),
                       lambda m: float(np.mean(m.predict(Xva) == yva)), len(yva) > 0)


def fit_wide_ridge(x, features, rows, targets: dict, bow_rows: int | None, alphas, blocks: dict,
                          weightings: list[dict]) -> dict:
    """Ridge per target (standardised log counts), alpha chosen on val by Spearman, on the wide
    inputs and more beside the model's own: the starting point of popularity's wide path.
    ``blocks`` {name: sparse matrix}
    whose columns map one to one onto the weights of the wide layer that reads input ``name``,
    each multiplied inside the ridge by its weight in one of ``weightings`` ({name: weight},
    1 when absent), tried on val with alpha. A block's penalty is alpha / weight**2: a larger
    weight lets few, strong columns such as an outlet's id speak without loosening the bag of
    words. {target: {dense, bow, blocks: {name: [columns, 1]}, bias, alpha, weights}}."""
    from scipy import sparse
    from sklearn.linear_model import Ridge

    from newsdl.tasks.metrics import spearman

    dense, bag, scales = wide_inputs(x, features, rows["train"])
    names = list(blocks)
    grid = [{n: float(w.get(n, 1.0)) for n in names} for w in weightings] or [{n: 1.0 for n in names}]

    def matrix(part, w):
        extra = [blocks[n][part] * w[n] for n in names]
        own = [] if dense is None and bag is None else [sparse.csr_matrix(_stack(dense, bag, part))]
        return sparse.hstack(own + extra, format="csr")

    out = {}
    for name, z in targets.items():
        tr = rows["train"][~np.isnan(z[rows["train"]])]
        va = rows["val"][~np.isnan(z[rows["val"]])]
        if len(tr) < 2:
            continue
        fits = {}

        def fit(candidate):  # (the weights' index, the ridge fitted with them)
            alpha, g = candidate
            if g not in fits:
                fits[g] = matrix(tr, grid[g]), matrix(va, grid[g])
            return g, Ridge(alpha=alpha).fit(fits[g][0], z[tr])

        candidates = tuple((a, g) for g in range(len(grid)) for a in alphas)
        (alpha, g), (_, best) = best_on_val(candidates, fit, lambda gm: spearman(z[va], gm[1].predict(fits[gm[0]][1])),
                                            len(va) > 1)
        coef = best.coef_
        own = (0 if dense is None else dense.shape[1]) + (0 if bag is None else bag.shape[1])
        part = _split_coef(coef[None, :own], dense, scales, bow_rows) if own else {}
        start, split = own, {}
        for n in names:
            width = blocks[n].shape[1]
            split[n] = (coef[start:start + width] * grid[g][n])[:, None].astype(np.float32)
            start += width
        out[name] = {**part, "blocks": split, "bias": np.array([best.intercept_], np.float32),
                     "alpha": float(alpha), "weights": grid[g]}
    return out
