"""geoloc: where a story happens, as (lat, lon).

Heads (``--head``):
- regress: the paper's direct regression, as a unit 3-vector (no dateline seam), through the
  GCD loss (newsdl.ops.GreatCircleLoss).
- cells: a softmax over geo-cells (k-means on the unit sphere of the training locations, one
  cell per CELL_ARTICLES training articles, so dense regions get small cells), whose
  probability-weighted centre a bounded offset refines, all trained with the GCD loss plus the
  cells' cross-entropy.
- auto (default): trains both, keeps the one with the lower val mean km.

With the gazetteer feature (on by default), the places most mentioned in the text are inputs
and candidates: a softmax "trust" output, trained with cross-entropy, says which of the head's own
point and the candidates is the story's place (a candidate within TRUST_KM of the truth), and the
prediction is the geometric median of that distribution (models.GeoMedian): the Bayes decision
for the mean-km metric. A place with half the probability or more is predicted as is; with no
likely place, the prediction falls back on the head's own estimate, which learned the outlets'
and topics' geography from the same text. The gazetteer baseline cannot hedge this way.
"""

from __future__ import annotations

import numpy as np

from newsdl import defaults as td
from newsdl.tasks import metrics as M

NAME = "geoloc"
HEADS = ("regress", "cells")


def labelled(corpus) -> np.ndarray:
    return ~np.isnan(corpus.lat) & ~np.isnan(corpus.lon)


def fit(corpus, train_rows: np.ndarray, seed: int) -> dict:
    xyz = M.to_unit(corpus.lat[train_rows], corpus.lon[train_rows])
    return {"cells": make_cells(xyz, seed)}


def make_cells(xyz: np.ndarray, seed: int) -> list[list[float]]:
    """k-means centres on the sphere; k follows the data (see defaults.CELL_ARTICLES)."""
    from sklearn.cluster import KMeans

    distinct = np.unique(np.round(xyz, 6), axis=0)
    k = int(np.clip(len(xyz) // td.CELL_ARTICLES, td.CELLS_MIN, td.CELLS_MAX))
    k = max(1, min(k, len(distinct)))
    if k == len(distinct):
        centres = distinct
    else:
        centres = KMeans(k, n_init=4, random_state=seed).fit(xyz).cluster_centers_
    return M.spherical_mean(centres[:, None, :]).round(6).tolist()


def nearest_cell(xyz: np.ndarray, cells) -> np.ndarray:
    return np.argmax(xyz @ np.asarray(cells, float).T, axis=1).astype(np.int32)


def targets(corpus, fitted: dict, head: str, x: dict) -> dict:
    latlon = np.stack([corpus.lat, corpus.lon], axis=1).astype(np.float32)
    y = {"latlon": latlon}
    if head == "cells":
        xyz = M.to_unit(np.nan_to_num(corpus.lat), np.nan_to_num(corpus.lon))
        y["cell"] = nearest_cell(xyz, fitted["cells"])
    if "gaz_xyz" in x:
        y["own"] = latlon
        y["trust"] = trust_labels(corpus, x)
    return y


def trust_labels(corpus, x: dict) -> np.ndarray:
    """1 + the index of the nearest named place within TRUST_KM of the truth, else 0 (own)."""
    truth = M.to_unit(np.nan_to_num(corpus.lat), np.nan_to_num(corpus.lon))
    cos = np.einsum("nkd,nd->nk", x["gaz_xyz"].astype(float), truth)
    km = np.arccos(np.clip(cos, -1, 1)) * M.EARTH_RADIUS_KM
    km = np.where(x["gaz_mask"] > 0, km, np.inf)
    nearest = np.argmin(km, axis=1)
    return np.where(km[np.arange(len(km)), nearest] <= td.TRUST_KM, nearest + 1, 0).astype(np.int32)


def wide_init(corpus, x, features, rows, fitted):
    return None  # the gazetteer anchor plays this part for geoloc (models.build_geoloc)


def build(features, train_inputs, fitted, head):
    from newsdl.tasks.models import build_geoloc

    return build_geoloc(features, train_inputs, fitted, head)


def compile_model(model, lr: float, fitted: dict, head: str) -> str:
    """Compile; return the val metric to monitor (val mean km of the prediction)."""
    import keras

    from newsdl.ops import GreatCircleLoss
    from newsdl.tasks.models import MeanKm

    names = set(model.output_names) if hasattr(model, "output_names") else set(model.output)
    point = "own" if "own" in names else "latlon"
    losses, weights = {point: GreatCircleLoss()}, {point: 1.0}
    for name in ("cell", "trust"):
        if name in names:
            losses[name] = keras.losses.SparseCategoricalCrossentropy()
            weights[name] = td.CE_KM
    # The GCD op is a custom kernel, which XLA cannot compile.
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=losses, loss_weights=weights,
                  metrics={"latlon": [MeanKm()]}, jit_compile=False)
    return "val_latlon_km" if len(names) > 1 else "val_km"


def sample_weight(corpus, fitted, train_rows):
    return None


def predict(model, dataset, fitted) -> dict:
    out = model.predict(dataset, verbose=0)
    latlon = np.asarray(out["latlon"], float)
    return {"lat": latlon[:, 0], "lon": latlon[:, 1]}


def score(corpus, pred: dict, fitted) -> dict:
    return M.geoloc_metrics(corpus.lat, corpus.lon, pred["lat"], pred["lon"])


def val_score(corpus, pred: dict, fitted) -> float:
    """The number `--head auto` and the resume logic compare (lower is better)."""
    return float(np.mean(M.gcd_km(corpus.lat, corpus.lon, pred["lat"], pred["lon"])))


# ------------------------------------------------------------------ baselines

def medoid(lat, lon, max_candidates: int = td.MEDOID_CANDIDATES, seed: int = 0) -> tuple[float, float]:
    """The training point with the least total GCD to all training points (among at most
    ``max_candidates`` distinct ones, the most frequent first)."""
    pts, counts = np.unique(np.stack([lat, lon], axis=1).round(5), axis=0, return_counts=True)
    cand = pts[np.argsort(-counts, kind="stable")[:max_candidates]]
    xyz_all, xyz_c = M.to_unit(pts[:, 0], pts[:, 1]), M.to_unit(cand[:, 0], cand[:, 1])
    total = np.zeros(len(cand))
    for lo in range(0, len(pts), 4096):  # chunks bound the [candidates, points] matrix
        cos = np.clip(xyz_c @ xyz_all[lo:lo + 4096].T, -1, 1)
        total += (np.arccos(cos) * counts[lo:lo + 4096]).sum(axis=1)
    best = cand[int(np.argmin(total))]
    return float(best[0]), float(best[1])


def baselines(corpus, inputs, features, rows: dict, fitted) -> dict:
    """Constant (training medoid), kNN on the model's dense features (k on val) and the
    gazetteer's most-mentioned place (the medoid where no place is named), on the test rows."""
    from newsdl.tasks.baselines import dense_features
    from newsdl.tasks.gazetteer import gazetteer

    tr, va, te = rows["train"], rows["val"], rows["test"]
    c_lat, c_lon = medoid(corpus.lat[tr], corpus.lon[tr])
    n = len(te)
    out = {"constant": {"lat": np.full(n, c_lat), "lon": np.full(n, c_lon)}}

    X = dense_features(inputs, features, tr)
    if X is not None:
        out["knn"] = _knn(X, corpus, tr, va, te)

    texts = [corpus.texts[i] for i in te]
    g_lat, g_lon, found = gazetteer().top_place(texts)
    out["gazetteer"] = {"lat": np.where(found, g_lat, c_lat), "lon": np.where(found, g_lon, c_lon)}
    return out


def _knn(X, corpus, tr, va, te) -> dict:
    from sklearn.neighbors import NearestNeighbors

    xyz = M.to_unit(corpus.lat[tr], corpus.lon[tr])
    nn = NearestNeighbors().fit(X[tr])

    def predict(rows, k):
        _, idx = nn.kneighbors(X[rows], n_neighbors=min(k, len(tr)))
        lat, lon = M.from_unit(M.spherical_mean(xyz[idx]))
        return lat, lon

    best_k = td.KNN_K[0]
    if len(va):
        errors = {}
        for k in td.KNN_K:
            lat, lon = predict(va, k)
            errors[k] = float(np.mean(M.gcd_km(corpus.lat[va], corpus.lon[va], lat, lon)))
        best_k = min(errors, key=errors.get)
    lat, lon = predict(te, best_k)
    return {"lat": lat, "lon": lon, "params": {"k": best_k}}


def plots(folder, corpus, preds: dict, fitted) -> list[str]:
    from newsdl.tasks import plots

    return [plots.error_cdf(folder / "error_cdf.png", corpus, preds),
            plots.world_scatter(folder / "world.png", corpus, preds["model"])]


def records(ids, pred: dict, fitted) -> list[dict]:
    return [{"id": i, "lat": round(float(a), 5), "lon": round(float(o), 5)}
            for i, a, o in zip(ids, pred["lat"], pred["lon"])]
