"""The metrics of SPEC section 4, in numpy: the same functions score the model and the baselines."""

from __future__ import annotations

import numpy as np

from newsdl import defaults as td
from newsdl.geo import gcd_km


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


def paired_bootstrap(resample, full: dict, n: int, keys, seed: int, resamples: int = td.BOOTSTRAP_RESAMPLES) -> dict:
    """{baseline: {metric: {"diff", "ci95"}}}: the model minus each baseline on the ``n`` test
    examples (``full``: every system's scores on all of them), and the 2.5th and 97.5th percentiles
    of that difference over ``resamples`` resamples of them. ``resample(rows)`` scores every system
    on the same rows (paired: one draw serves all)."""
    rng = np.random.default_rng(seed)
    draws = [resample(rng.integers(0, n, n)) for _ in range(resamples)]
    out = {}
    for name in (s for s in full if s != "model"):
        out[name] = {}
        for k in keys:
            d = np.array([s["model"][k] - s[name][k] for s in draws], float)
            out[name][k] = {"diff": float(full["model"][k] - full[name][k]),
                            "ci95": [float(np.nanpercentile(d, 2.5)), float(np.nanpercentile(d, 97.5))]}
    return out
