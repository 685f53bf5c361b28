"""The PNG plots of `newsdl evaluate` (matplotlib, Agg: no display needed on a cluster node)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from newsdl import defaults as td
from newsdl.geo import gcd_km
from newsdl.tasks import metrics as M
from newsdl.workspace import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path.name


def error_cdf(path: Path, corpus, preds: dict) -> str:
    """Share of test articles within d km, for the model and every baseline, d on a log axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pred in preds.items():
        d = np.sort(gcd_km(corpus.lat, corpus.lon, pred["lat"], pred["lon"]))
        ax.step(np.maximum(d, 0.1), np.arange(1, len(d) + 1) / len(d), where="post", label=name,
                linewidth=2.2 if name == "model" else 1.2)
    for km in td.ACC_KM:
        ax.axvline(km, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20100)
    ax.set_ylim(0, 1)
    ax.set_xlabel("great-circle error (km, log scale)")
    ax.set_ylabel("share of test articles")
    ax.set_title("geoloc: error CDF on the test split")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def world_scatter(path: Path, corpus, pred: dict, seed: int = 0) -> str:
    """True (o) and predicted (x) points, joined by their error, on a lon/lat plate carree."""
    plt = pyplot()
    n = len(corpus.lat)
    rows = np.random.default_rng(seed).permutation(n)[:td.PLOT_POINTS]
    fig, ax = plt.subplots(figsize=(10, 5.2))
    for i in rows:
        lon0, lon1 = corpus.lon[i], pred["lon"][i]
        if abs(lon1 - lon0) <= 180:  # a line across the dateline would cross the whole map
            ax.plot([lon0, lon1], [corpus.lat[i], pred["lat"][i]], color="grey", linewidth=0.4, alpha=0.5)
    ax.scatter(corpus.lon[rows], corpus.lat[rows], s=10, marker="o", label="true", color="tab:blue")
    ax.scatter(pred["lon"][rows], pred["lat"][rows], s=12, marker="x", label="predicted", color="tab:red")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(f"geoloc: true and predicted locations ({len(rows)} test articles)")
    return save_figure(fig, path)


def confusion(path: Path, y_true, y_pred, classes) -> str:
    from sklearn.metrics import confusion_matrix

    plt = pyplot()
    labels = list(classes) + sorted(set(map(str, y_true)) - set(classes))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 30:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted outlet")
    ax.set_ylabel("true outlet")
    ax.set_title("source: confusion matrix on the test split (colour: share of the row)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def predicted_vs_true(path: Path, true_log, pred_log) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(true_log, pred_log, s=8, alpha=0.5)
    hi = float(max(np.max(true_log, initial=1), np.max(pred_log, initial=1))) * 1.05
    ax.plot([0, hi], [0, hi], color="grey", linewidth=0.8, linestyle="--", label="y = x")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("true log1p(comments)")
    ax.set_ylabel("predicted log1p(comments)")
    ax.set_title(f"popularity: Spearman {M.spearman(true_log, pred_log):.3f} on the test split")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
