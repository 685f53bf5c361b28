"""geoloc: where a story happens, as (lat, lon).

Heads (``--head``):
- regress: the paper's direct regression, as a unit 3-vector (no dateline seam), through the
  GCD loss (newsdl.ops.great_circle_distance).
- cells: a softmax over geo-cells (k-means on the unit sphere of the training locations, one
  cell per CELL_ARTICLES training articles, so dense regions get small cells), whose
  probability-weighted centre a bounded offset refines, all trained with the GCD loss plus the
  cells' cross-entropy.
- auto (default): trains both, keeps the one with the lower val mean km.

Each cell also has a real place: its most frequent training location. After training, a place
decision is fitted on val: where one place (a named one, or a likely cell's, the two merged within
PLACE_KM) holds probability mass at or above a threshold, the prediction is that place exactly;
elsewhere it stays the model's mean-km-optimal point. The threshold is the one with the best val
acc@25km among those whose val mean km is within PLACE_MEAN_SLACK of the best; "never" is a
candidate, so a corpus where naming places does not pay keeps the hedged point.

Each outlet with OUTLET_HOME_MIN training stories or more has a home, its most frequent training
place; for its stories the home is one more candidate beside the named places (a local paper's
"Richmond" is its own Richmond), with the outlet's numbers (stories, share at home) as evidence.

With the gazetteer feature (on by default), the places most mentioned in the text are inputs
and candidates: a softmax "trust" output, trained with cross-entropy, says which of the head's own
point and the candidates is the story's place (a candidate within TRUST_KM of the truth), and the
prediction is the geometric median of that distribution (GeoMedian): the Bayes decision
for the mean-km metric. A place with half the probability or more is predicted as is; with no
likely place, the prediction falls back on the head's own estimate, which learned the outlets'
and topics' geography from the same text. The gazetteer baseline cannot hedge this way.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from newsdl import defaults as td  # noqa: E402
from newsdl import geo  # noqa: E402
from newsdl.tasks import metrics as M  # noqa: E402
from newsdl.tasks.articles import ArticleTask  # noqa: E402
from newsdl.errors import UserError  # noqa: E402
from newsdl.tasks.models import build_trunk  # noqa: E402

_EPS = 1e-7


class Geoloc(ArticleTask):
    name = "geoloc"
    metric_keys = ("median_km", "mean_km", *(f"acc_{km}km" for km in td.ACC_KM))
    main_metric, higher_is_better = "mean_km", False
    families = td.FEATURES
    monitor, min_delta = "val_km", td.MIN_DELTA["geoloc"]
    options = {"head": "auto"}
    val_outputs = ("latlon",)

    def check_option(self, name, value):
        if value not in td.HEADS:
            raise UserError(f"--head {value}: choose one of {', '.join(td.HEADS)}")
        return value

    def heads(self, s):
        return [h for h in td.HEADS if h != "auto"] if s["head"] == "auto" else [s["head"]]

    def labelled(self, corpus):
        return ~np.isnan(corpus.lat) & ~np.isnan(corpus.lon)

    def fit(self, corpus, train_rows, seed):
        lat, lon = corpus.lat[train_rows], corpus.lon[train_rows]
        cells = make_cells(geo.to_unit(lat, lon), seed)
        fitted = {"cells": cells, "cell_places": cell_places(cells, lat, lon)}
        if "source" in corpus.labels:
            fitted["outlet_homes"] = outlet_homes(corpus.source[train_rows], lat, lon)
        return fitted

    def task_inputs(self, corpus, fitted):
        """The outlet's home (its most frequent training place) as one more candidate place."""
        if not fitted.get("outlet_homes"):
            return {}
        source = corpus.labels.get("source", np.full(len(corpus), None, dtype=object))
        return home_inputs(source, corpus.lat, corpus.lon, corpus.split == "train", fitted["outlet_homes"])

    def targets(self, corpus, fitted, x):
        """latlon, the cell (for the cells head) and, with the gazetteer, which named place is right."""
        xyz = geo.to_unit(np.nan_to_num(corpus.lat), np.nan_to_num(corpus.lon))
        y = {"latlon": np.stack([corpus.lat, corpus.lon], axis=1).astype(np.float32),
             "cell": np.argmax(xyz @ np.asarray(fitted["cells"], float).T, axis=1).astype(np.int32)}
        if candidate_arrays(x)[0] is not None:
            y["trust"] = trust_labels(corpus, x)
        return y

    def build(self, data, s, head):
        train_x = {k: v[data.rows["train"]] for k, v in data.x.items()}
        return build_model(s["features"], train_x, data.fitted, head)

    def losses(self, y, pred, batch):
        """The GCD in km of the head's own point (the prediction itself without the gazetteer),
        plus CE_KM x the cross-entropy of the cells and of the trust in the named places."""
        import tensorflow as tf

        from newsdl.ops import great_circle_distance

        point = "own" if "own" in pred else "latlon"
        terms = {point: great_circle_distance(tf.cast(y["latlon"], tf.float32), tf.cast(pred[point], tf.float32))}
        for name in ("cell", "trust"):
            if name in pred:
                terms[name] = keras.losses.sparse_categorical_crossentropy(y[name], pred[name])
        loss = terms[point] + td.CE_KM * sum(v for k, v in terms.items() if k != point)
        return {"loss": loss, **terms}

    def validate(self, data, outputs):
        va = data.rows["val"]
        truth = data.y["latlon"][va].astype(float)
        pred = outputs["latlon"].astype(float)
        return {"val_km": float(np.mean(geo.gcd_km(truth[:, 0], truth[:, 1], pred[:, 0], pred[:, 1])))}

    def calibrate(self, data, model, s):
        """The place decision's threshold, chosen on val (see decide_places)."""
        va = data.rows["val"]
        out = self.val_outputs_of(data, model, s)
        points, support = place_support(out, data.fitted)
        if points is None or len(va) == 0:
            return {}
        truth = data.y["latlon"][va].astype(float)
        hedge = np.asarray(out["latlon"], float)
        table = {}
        for threshold in (*td.PLACE_THRESHOLDS, None):
            lat, lon = decide_places(hedge, points, support, threshold)
            km = geo.gcd_km(truth[:, 0], truth[:, 1], lat, lon)
            table[threshold] = (float(np.mean(km)), float(np.mean(km <= td.PLACE_KM)))
        bound = (1.0 + td.PLACE_MEAN_SLACK) * min(mean for mean, _ in table.values())
        allowed = [t for t, (mean, _) in table.items() if mean <= bound]
        best = max(allowed, key=lambda t: (table[t][1], -table[t][0]))
        return {"place_threshold": best}

    def decode(self, outputs, fitted):
        latlon = np.asarray(outputs["latlon"], float)
        lat, lon = latlon[:, 0], latlon[:, 1]
        points, support = place_support(outputs, fitted)
        threshold = (fitted.get("calibration") or {}).get("place_threshold")
        if points is not None and threshold is not None:
            lat, lon = decide_places(latlon, points, support, threshold)
        pred = {"lat": lat, "lon": lon}
        if points is not None:
            pred.update(points=points, support=support, expected_km=expected_km(outputs, fitted, lat, lon))
        return pred

    def score(self, corpus, pred, fitted):
        return M.geoloc_metrics(corpus.lat, corpus.lon, pred["lat"], pred["lon"])

    def baselines(self, corpus, inputs, features, rows, fitted):
        return baselines(corpus, inputs, features, rows, fitted)

    def plots(self, folder, corpus, preds, fitted):
        from newsdl.tasks import plots

        return [plots.error_cdf(folder / "error_cdf.png", corpus, preds),
                plots.world_scatter(folder / "world.png", corpus, preds["model"])]

    def records(self, ids, pred, fitted):
        """The point, the GeoNames place nearest to it, and where the model has candidate places,
        the CANDIDATES_SHOWN best supported with their probability mass and the expected error."""
        from newsdl.features.gazetteer import gazetteer

        g = gazetteer()
        out = []
        for row, i in enumerate(ids):
            lat, lon = float(pred["lat"][row]), float(pred["lon"][row])
            rec = {"id": i, "lat": round(lat, 5), "lon": round(lon, 5), "place": _place(g, lat, lon)}
            if "points" in pred:
                order = np.argsort(-pred["support"][row], kind="stable")
                shown, seen = [], set()
                for j in order:
                    if pred["support"][row, j] <= 0 or len(shown) == td.CANDIDATES_SHOWN:
                        break
                    c_lat, c_lon = (float(v) for v in pred["points"][row, j])
                    place = _place(g, c_lat, c_lon)
                    key = (place["name"], place["country"])
                    if key in seen:  # one place named twice (a named city and its cell's place)
                        continue
                    seen.add(key)
                    shown.append({**place, "lat": round(c_lat, 5), "lon": round(c_lon, 5),
                                  "probability": round(float(pred["support"][row, j]), 4)})
                rec["candidates"] = shown
                rec["expected_error_km"] = round(float(pred["expected_km"][row]), 1)
            out.append(rec)
        return out


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
    return geo.spherical_mean(centres[:, None, :]).round(6).tolist()


def cell_places(cells, lat: np.ndarray, lon: np.ndarray) -> list[list[float]]:
    """Each cell's most frequent training location (its k-means centre where the cell is empty):
    a real place, where the centre can fall between cities or at sea."""
    centres = np.asarray(cells, float)
    points = np.stack([lat, lon], axis=1).round(4)
    member = np.argmax(geo.to_unit(points[:, 0], points[:, 1]) @ centres.T, axis=1)
    c_lat, c_lon = geo.from_unit(centres)
    out = []
    for c in range(len(centres)):
        mine = points[member == c]
        out.append(most_frequent_point(mine)[0] if len(mine) else
                   [round(float(c_lat[c]), 4), round(float(c_lon[c]), 4)])
    return out


def most_frequent_point(points: np.ndarray) -> tuple[list[float], int]:
    """The most frequent of ``points`` ([n, 2], already rounded) and how often it occurs."""
    pts, counts = np.unique(points, axis=0, return_counts=True)
    best = int(np.argmax(counts))
    return [float(pts[best][0]), float(pts[best][1])], int(counts[best])


def place_support(outputs: dict, fitted: dict):
    """The places the model can name, [n, m, 2] (lat, lon), and each one's probability mass:
    its own probability plus that of every other candidate within PLACE_KM (a named city and the
    cell whose most frequent place it is are one place). Candidates: the named places (trust),
    and the CANDIDATE_CELLS most likely cells' places, weighted by the trust in the head's own
    point. (None, None) when the model names no place (regress head without the gazetteer)."""
    pts, probs = [], []
    n = len(outputs["latlon"])
    own = np.ones((n, 1))
    if "trust" in outputs and "gaz_places" in outputs:
        trust = np.asarray(outputs["trust"], float)
        pts.append(np.asarray(outputs["gaz_places"], float))
        probs.append(trust[:, 1:])
        own = trust[:, :1]
    if "cell" in outputs and "cell_places" in fitted:
        cell = np.asarray(outputs["cell"], float)
        top = np.argsort(-cell, axis=1)[:, :td.CANDIDATE_CELLS]
        places = np.asarray(fitted["cell_places"], float)
        pts.append(geo.to_unit(places[top][..., 0], places[top][..., 1]))
        probs.append(own * np.take_along_axis(cell, top, axis=1))
    if not pts:
        return None, None
    xyz, p = np.concatenate(pts, axis=1), np.concatenate(probs, axis=1)
    near = np.einsum("nid,njd->nij", xyz, xyz) >= np.cos(td.PLACE_KM / geo.EARTH_RADIUS_KM)
    lat, lon = geo.from_unit(xyz)
    return np.stack([lat, lon], axis=-1), np.einsum("nij,nj->ni", near, p)


def expected_km(outputs: dict, fitted: dict, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The prediction's expected error under the model's own distribution: the trust weights over
    the head's point and the candidates (within the head's point, the cells' places weighted by
    the cell softmax where there are cells)."""
    terms = []
    if "trust" in outputs:
        trust = np.asarray(outputs["trust"], float)
        cand = np.asarray(outputs["gaz_places"], float)
        c_lat, c_lon = geo.from_unit(cand)
        terms.append((trust[:, 1:], c_lat, c_lon))
        own_w = trust[:, :1]
        own = np.asarray(outputs["own"], float)
    else:
        own_w = np.ones((len(lat), 1))
        own = np.asarray(outputs["latlon"], float)
    if "cell" in outputs and "cell_places" in fitted:
        places = np.asarray(fitted["cell_places"], float)
        cell = np.asarray(outputs["cell"], float)
        terms.append((own_w * cell, np.broadcast_to(places[:, 0], cell.shape), np.broadcast_to(places[:, 1], cell.shape)))
    else:
        terms.append((own_w, own[:, :1], own[:, 1:2]))
    return sum((w * geo.gcd_km(lat[:, None], lon[:, None], a, o)).sum(axis=1) for w, a, o in terms)


def _place(g, lat: float, lon: float) -> dict:
    """The GeoNames place at a point, {name, country, km}: a place whose own point it is (a
    country's or a region's before a city's), else the most populous city within PLACE_KM
    ("Paris", not its 3rd arrondissement), else the nearest place."""
    cos = g.xyz @ geo.to_unit(lat, lon).astype(np.float32)
    within = np.flatnonzero(cos >= np.cos(td.PLACE_KM / geo.EARTH_RADIUS_KM))
    km = geo.gcd_km(lat, lon, g.lat[within], g.lon[within])  # float64: float32 cannot tell 1 km
    exact = [int(i) for i, d in zip(within, km) if d <= 1.0]
    near = [int(i) for i in within if g.places[i].kind == "city"]
    pool = exact or near
    if pool:
        best = max(pool, key=lambda i: (g.places[i].kind != "city", g.places[i].population))
    else:
        best = int(np.argmax(cos))
    p = g.places[best]
    return {"name": p.name, "country": p.country,
            "km": round(float(geo.gcd_km(lat, lon, g.lat[best], g.lon[best])), 1)}


def decide_places(hedge: np.ndarray, points: np.ndarray, support: np.ndarray, threshold):
    """(lat, lon): the best-supported place where its mass reaches ``threshold``, else the
    model's mean-km-optimal point ``hedge`` [n, 2] (threshold None: always the latter)."""
    lat, lon = hedge[:, 0].copy(), hedge[:, 1].copy()
    if threshold is None:
        return lat, lon
    best = np.argmax(support, axis=1)
    rows = np.arange(len(best))
    snap = support[rows, best] >= threshold
    lat[snap], lon[snap] = points[rows, best, 0][snap], points[rows, best, 1][snap]
    return lat, lon


def outlet_homes(source: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> dict[str, list[float]]:
    """{outlet: [lat, lon, stories there, stories]} for each outlet with at least
    OUTLET_HOME_MIN training stories: its most frequent training place. A local paper's stories
    mostly happen in its town, which settles the "Richmond" or "Athens" that its text names."""
    points = np.stack([lat, lon], axis=1).round(4)
    homes = {}
    for outlet in sorted({s for s in source if isinstance(s, str) and s}):
        mine = points[source == outlet]
        if len(mine) < td.OUTLET_HOME_MIN:
            continue
        home, there = most_frequent_point(mine)
        homes[outlet] = [*home, there, int(len(mine))]
    return homes


def home_inputs(source, lat, lon, training: np.ndarray, homes: dict) -> dict[str, np.ndarray]:
    """home_xyz [n, 1, 3], home_mask [n, 1] and home_feat [n, 2] (log1p of the outlet's training
    stories, the share of them at its home). A training story does not count toward its own
    outlet's numbers (leave one out), or the model would learn to trust homes more on train
    than they deserve on new stories."""
    n = len(source)
    xyz = np.zeros((n, 1, 3), np.float32)
    mask = np.zeros((n, 1), np.float32)
    feat = np.zeros((n, 2), np.float32)
    for row, outlet in enumerate(source):
        home = homes.get(outlet) if isinstance(outlet, str) else None
        if home is None:
            continue
        h_lat, h_lon, there, total = home
        if training[row]:
            total -= 1
            there -= int(round(lat[row], 4) == h_lat and round(lon[row], 4) == h_lon)
        if total < 1 or there < 1:
            continue
        xyz[row, 0] = geo.to_unit(h_lat, h_lon)
        mask[row, 0] = 1.0
        feat[row] = (np.log1p(total), there / total)
    return {"home_xyz": xyz, "home_mask": mask, "home_feat": feat}


def candidate_arrays(x: dict):
    """(xyz [n, k, 3], mask [n, k]) of the candidate places the model weighs (the named places,
    then the outlet's home), in the model's order; (None, None) without any."""
    parts = [(x[f"{p}_xyz"], x[f"{p}_mask"]) for p in ("gaz", "home") if f"{p}_xyz" in x]
    if not parts:
        return None, None
    return np.concatenate([a for a, _ in parts], axis=1), np.concatenate([m for _, m in parts], axis=1)


def trust_labels(corpus, x: dict) -> np.ndarray:
    """1 + the index of the nearest candidate place within TRUST_KM of the truth, else 0 (own)."""
    truth = geo.to_unit(np.nan_to_num(corpus.lat), np.nan_to_num(corpus.lon))
    xyz, mask = candidate_arrays(x)
    cos = np.einsum("nkd,nd->nk", xyz.astype(float), truth)
    km = np.arccos(np.clip(cos, -1, 1)) * geo.EARTH_RADIUS_KM
    km = np.where(mask > 0, km, np.inf)
    nearest = np.argmin(km, axis=1)
    return np.where(km[np.arange(len(km)), nearest] <= td.TRUST_KM, nearest + 1, 0).astype(np.int32)


def medoid(lat, lon, max_candidates: int = td.MEDOID_CANDIDATES, seed: int = 0) -> tuple[float, float]:
    """The training point with the least total GCD to all training points (among at most
    ``max_candidates`` distinct ones, the most frequent first)."""
    pts, counts = np.unique(np.stack([lat, lon], axis=1).round(5), axis=0, return_counts=True)
    cand = pts[np.argsort(-counts, kind="stable")[:max_candidates]]
    xyz_all, xyz_c = geo.to_unit(pts[:, 0], pts[:, 1]), geo.to_unit(cand[:, 0], cand[:, 1])
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
    from newsdl.features.gazetteer import gazetteer

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

    from newsdl.tasks.baselines import best_on_val

    xyz = geo.to_unit(corpus.lat[tr], corpus.lon[tr])
    nn = NearestNeighbors().fit(X[tr])

    def predict(rows, k):
        _, idx = nn.kneighbors(X[rows], n_neighbors=min(k, len(tr)))
        lat, lon = geo.from_unit(geo.spherical_mean(xyz[idx]))
        return lat, lon

    best_k, _ = best_on_val(td.KNN_K, lambda k: k,
                            lambda k: -float(np.mean(geo.gcd_km(corpus.lat[va], corpus.lon[va], *predict(va, k)))),
                            len(va) > 0)
    lat, lon = predict(te, best_k)
    return {"lat": lat, "lon": lon, "params": {"k": best_k}}



# ------------------------------------------------------------------ the model

def _unit(x, axis=-1):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), _EPS))


@keras.saving.register_keras_serializable(package="newsdl")
class UnitToLatLon(keras.layers.Layer):
    """[..., 3] vector -> [..., 2] (lat, lon) in degrees, through its direction: longitude comes
    from atan2, so there is no seam at the dateline for the network to learn around."""

    def call(self, xyz):
        xyz = _unit(xyz)
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        # A tiny floor keeps the gradient finite at a pole and moves latitudes by < 1e-6 rad.
        lat = ops.arctan2(z, ops.sqrt(x * x + y * y + 1e-12))
        lon = ops.arctan2(y, x)
        return ops.stack([lat, lon], axis=-1) * (180.0 / math.pi)

    def compute_output_shape(self, shape):
        return (*shape[:-1], 2)


@keras.saving.register_keras_serializable(package="newsdl")
class CellCentre(keras.layers.Layer):
    """The probability-weighted centre of the geo-cells, moved by a bounded learned offset.

    ``cells`` ([C, 3] unit vectors) are part of the config, so the file says where its cells are.
    """

    def __init__(self, cells, max_offset: float = td.CELL_OFFSET_MAX, **kwargs):
        super().__init__(**kwargs)
        self.cells = [list(map(float, c)) for c in np.asarray(cells, float)]
        self.max_offset = float(max_offset)
        self._cells = np.asarray(self.cells, np.float32)

    def call(self, inputs):
        probs, offset = inputs
        centre = _unit(ops.matmul(probs, ops.convert_to_tensor(self._cells)))
        return _unit(centre + self.max_offset * ops.tanh(offset))

    def compute_output_shape(self, shapes):
        return (shapes[0][0], 3)

    def get_config(self):
        return {**super().get_config(), "cells": self.cells, "max_offset": self.max_offset}


@keras.saving.register_keras_serializable(package="newsdl")
class TrustSoftmax(keras.layers.Layer):
    """Probabilities over [the head's own point, candidate place 1..K]; absent candidates get 0.

    Inputs: logits [B, 1 + K] and the candidates' mask [B, K]."""

    def call(self, inputs):
        logits, mask = inputs
        valid = ops.concatenate([ops.ones_like(mask[:, :1]), mask], axis=-1)
        return ops.softmax(ops.where(valid > 0, logits, -1e9), axis=-1)

    def compute_output_shape(self, shapes):
        return shapes[0]


@keras.saving.register_keras_serializable(package="newsdl")
class GeoMedian(keras.layers.Layer):
    """The point that minimises the expected distance under a discrete distribution of points:
    the weighted geometric median (Weiszfeld's iterations on the unit sphere's chords).

    It is the Bayes decision for the GCD metric. A point holding half the probability or more is
    the median exactly, so a trusted place is predicted as is, not dragged toward a compromise,
    and hedging happens only when no single point is likely enough.
    Inputs: weights [B, 1 + K], own point [B, 3], candidates [B, K, 3]."""

    def __init__(self, iterations: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.iterations = int(iterations)

    def call(self, inputs):
        weights, own, anchors = inputs
        points = ops.concatenate([own[:, None, :], anchors], axis=1)
        x = _unit(ops.sum(weights[..., None] * points, axis=1))
        for _ in range(self.iterations):
            dist = ops.sqrt(ops.sum(ops.square(points - x[:, None, :]), axis=-1) + 1e-12)
            w = weights / ops.maximum(dist, 1e-6)
            x = _unit(ops.sum(w[..., None] * points, axis=1))
        best = ops.argmax(weights, axis=-1)
        top = ops.take_along_axis(points, best[:, None, None], axis=1)[:, 0, :]
        return ops.where(ops.max(weights, axis=-1, keepdims=True) >= 0.5, top, x)

    def compute_output_shape(self, shapes):
        return (shapes[1][0], 3)

    def get_config(self):
        return {**super().get_config(), "iterations": self.iterations}


def build_model(features, train_inputs, fitted, head):
    """Outputs: latlon (the prediction); with candidate places (the gazetteer's, the outlet's
    home), also own (the head's point, trained with the GCD loss) and trust (which of own and the
    candidates is right, trained with cross-entropy), latlon being their geometric median, and
    gaz_places (the candidates); with cells, cell (cross-entropy)."""
    inputs, h, _ = build_trunk(features, train_inputs, fitted)
    outputs = {}
    anchor = None
    groups = []  # (xyz, mask, feat) of each kind of candidate
    if "gaz" in features:
        groups.append((inputs["gaz_xyz"], inputs["gaz_mask"], inputs["gaz_feat"]))
    if "home_xyz" in train_inputs:
        for name in ("home_xyz", "home_mask", "home_feat"):
            inputs[name] = keras.Input(shape=train_inputs[name].shape[1:], name=name)
        groups.append((inputs["home_xyz"], inputs["home_mask"], inputs["home_feat"]))
    if groups:
        def joined(i, name):
            parts = [g[i] for g in groups]
            return parts[0] if len(parts) == 1 else keras.layers.Concatenate(axis=1, name=name)(parts)

        xyz, mask = joined(0, "candidate_xyz"), joined(1, "candidate_mask")
        k = sum(int(train_inputs[f"{p}_mask"].shape[1]) for p in ("gaz", "home") if f"{p}_mask" in inputs)
        trust_in = keras.layers.Concatenate(name="trust_in")([h, *[g[2] for g in groups]])
        # The head's own point starts at the first candidate (the most-mentioned place, or the
        # outlet's home without the gazetteer: coefficients 1, 0, ... on the candidates' unit
        # vectors) and learns how far to move from it: hedging relative to the evidence is far
        # easier to learn than mapping coordinates from scratch.
        coef = keras.layers.Dense(k, name="anchor_coef", kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant([1.0] + [0.0] * (k - 1)))(trust_in)
        anchor = keras.layers.Dot(axes=1, name="anchor")([coef, xyz])
    if head == "regress":
        # With an anchor, the offset starts at zero: the own point starts on the named place.
        own = keras.layers.Dense(3, name="xyz", kernel_initializer="zeros" if anchor is not None else "glorot_uniform")(h)
    else:
        cells = np.asarray(fitted["cells"], np.float32)
        probs = keras.layers.Dense(len(cells), activation="softmax", name="cell")(h)
        offset = keras.layers.Dense(3, name="cell_offset", kernel_initializer="zeros")(h)
        own = CellCentre(cells, name="cell_centre")([probs, offset])
        outputs["cell"] = probs
    if anchor is not None:
        own = keras.layers.Add(name="own_xyz")([own, anchor])
    own = keras.layers.UnitNormalization(name="own_unit")(own)
    if groups:
        # Trust depends on the article (h) and on the candidates' own numbers (mentions, share,
        # city or country; the outlet's stories at home), which the layer sees directly.
        # Trust starts on the first candidate (probability ~0.9, so the median is that place):
        # the untrained model is the gazetteer look-up, and training learns when to doubt it.
        logits = keras.layers.Dense(1 + k, name="trust_logits", kernel_initializer="zeros",
                                    bias_initializer=keras.initializers.Constant([0.0, 3.0] + [0.0] * (k - 1)))(trust_in)
        trust = TrustSoftmax(name="trust")([logits, mask])
        outputs["own"] = UnitToLatLon(name="own")(own)
        outputs["trust"] = trust
        # The candidate places themselves, so that decoding can name one (decide_places).
        outputs["gaz_places"] = keras.layers.Activation("linear", name="gaz_places")(xyz)
        own = GeoMedian(name="median")([trust, own, xyz])
    outputs = {"latlon": UnitToLatLon(name="latlon")(own), **outputs}
    return keras.Model(inputs, outputs, name=f"geoloc_{head}")


TASK = Geoloc()
