"""The metrics of SPEC section 4, in numpy: the same functions score the model and the baselines."""

from __future__ import annotations

import numpy as np

from newsdl import defaults as td

EARTH_RADIUS_KM = 6371.0088  # the SPEC's radius (IUGG mean), the same as newsdl.ops

def gcd_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points in degrees, float64.

    The atan2 (Vincenty) form: accurate at every distance, antipodes and coincident points
    included, where the haversine's arcsin and the cosine law's arccos lose digits.
    """
    p1, p2 = np.radians(np.asarray(lat1, float)), np.radians(np.asarray(lat2, float))
    dl = np.radians(np.asarray(lon2, float) - np.asarray(lon1, float))
    s1, c1, s2, c2 = np.sin(p1), np.cos(p1), np.sin(p2), np.cos(p2)
    num = np.hypot(c2 * np.sin(dl), c1 * s2 - s1 * c2 * np.cos(dl))
    den = s1 * s2 + c1 * c2 * np.cos(dl)
    return EARTH_RADIUS_KM * np.arctan2(num, den)


def to_unit(lat, lon) -> np.ndarray:
    """(lat, lon) degrees -> [n, 3] unit vectors: where averaging points is meaningful."""
    la, lo = np.radians(np.asarray(lat, float)), np.radians(np.asarray(lon, float))
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def from_unit(xyz) -> tuple[np.ndarray, np.ndarray]:
    """[n, 3] vectors (any length > 0) -> (lat, lon) degrees, lon in [-180, 180]."""
    xyz = np.asarray(xyz, float)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def spherical_mean(xyz, weights=None, axis=-2) -> np.ndarray:
    """Normalised (weighted) sum of unit vectors; the mean of an antipodal pair is arbitrary."""
    xyz = np.asarray(xyz, float)
    total = xyz.sum(axis=axis) if weights is None else (xyz * np.asarray(weights, float)[..., None]).sum(axis=axis)
    norm = np.linalg.norm(total, axis=-1, keepdims=True)
    return total / np.where(norm > 0, norm, 1.0)


def geoloc_metrics(true_lat, true_lon, pred_lat, pred_lon) -> dict:
    d = gcd_km(true_lat, true_lon, pred_lat, pred_lon)
    if len(d) == 0:
        raise ValueError("no test article has a location")
    out = {"median_km": float(np.median(d)), "mean_km": float(np.mean(d))}
    for km in td.ACC_KM:
        out[f"acc_{km}km"] = float(np.mean(d <= km))
    return out


def source_metrics(y_true, y_pred) -> dict:
    """Accuracy and macro-F1 over the classes in the truth or the predictions (sklearn's rule)."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def spearman(a, b) -> float:
    """Spearman's rank correlation; 0.0 when either side is constant (no ranking at all), where
    scipy would return NaN, which JSON cannot hold and which no comparison can order."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def popularity_metrics(true_log, pred_log) -> dict:
    """Both on log1p(comments): the model's output scale, where a 10x miss costs the same
    on a quiet story as on a viral one."""
    true_log, pred_log = np.asarray(true_log, float), np.asarray(pred_log, float)
    return {"spearman": spearman(true_log, pred_log), "mae_log": float(np.mean(np.abs(true_log - pred_log)))}


def beats(task, model: dict, baseline: dict) -> bool:
    """Whether ``model`` is strictly better than ``baseline`` on ``task``'s main metric."""
    key = task.main_metric
    return model[key] > baseline[key] if task.higher_is_better else model[key] < baseline[key]
