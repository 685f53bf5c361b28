"""The metric functions against hand-computed cases (SPEC section 4), GCD at the dateline and poles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from newsdl.tasks import get
from newsdl import geo
from newsdl.tasks import metrics as M

R = 6371.0088
KM_PER_DEG = R * math.pi / 180


@pytest.mark.parametrize("a, b, km", [
    ((0, 0), (0, 0), 0.0),
    ((0, 0), (0, 90), R * math.pi / 2),                       # a quarter of the equator
    ((0, 179.5), (0, -179.5), KM_PER_DEG),                    # across the dateline: 1 degree, not 359
    ((10, -180), (10, 180), 0.0),                             # the same meridian, both spellings
    ((90, 0), (90, 123), 0.0),                                # the north pole has every longitude
    ((-90, 45), (-90, -135), 0.0),                            # and so has the south pole
    ((89, 0), (89, 180), 2 * KM_PER_DEG),                     # over the pole, not around it
    ((90, 0), (-90, 0), R * math.pi),                         # pole to pole
    ((0, 0), (0, 180), R * math.pi),                          # antipodes on the equator
    ((45, 10), (-45, -170), R * math.pi),                     # antipodes off the equator
    ((0, 0), (1, 0), KM_PER_DEG),
])
def test_gcd_hand_computed(a, b, km):
    got = geo.gcd_km(a[0], a[1], b[0], b[1])
    assert got == pytest.approx(km, abs=1e-6)
    assert geo.gcd_km(b[0], b[1], a[0], a[1]) == pytest.approx(km, abs=1e-6)  # symmetric


def test_gcd_matches_the_haversine_package_on_random_points():
    haversine = pytest.importorskip("haversine")
    rng = np.random.default_rng(0)
    lat1, lat2 = rng.uniform(-90, 90, (2, 200))
    lon1, lon2 = rng.uniform(-180, 180, (2, 200))
    ours = geo.gcd_km(lat1, lon1, lat2, lon2)
    ref = [haversine.haversine((a, b), (c, d), unit=haversine.Unit.KILOMETERS, normalize=True)
           for a, b, c, d in zip(lat1, lon1, lat2, lon2)]
    # haversine uses a mean radius of 6371.0088 km too
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-6)


def test_geoloc_metrics_hand_computed():
    # Errors of 0, 10, 100, 1000 and 3000 km, all along the equator from (0, 0).
    km = np.array([0.0, 10.0, 100.0, 1000.0, 3000.0])
    pred_lon = km / KM_PER_DEG
    m = M.geoloc_metrics(np.zeros(5), np.zeros(5), np.zeros(5), pred_lon)
    assert list(m) == list(get("geoloc").metric_keys)
    assert m["median_km"] == pytest.approx(100.0)
    assert m["mean_km"] == pytest.approx(822.0)
    assert m["acc_1km"] == pytest.approx(0.2)
    assert m["acc_25km"] == pytest.approx(0.4)
    assert m["acc_200km"] == pytest.approx(0.6)
    assert m["acc_750km"] == pytest.approx(0.6)
    assert m["acc_2500km"] == pytest.approx(0.8)


def test_geoloc_metrics_at_the_dateline_and_the_poles():
    true_lat = np.array([0.0, 90.0, -89.5, 60.0])
    true_lon = np.array([179.9, 0.0, 0.0, -180.0])
    pred_lat = np.array([0.0, 89.9, -89.5, 60.0])
    pred_lon = np.array([-179.9, 170.0, 180.0, 180.0])
    m = M.geoloc_metrics(true_lat, true_lon, pred_lat, pred_lon)
    expected = np.array([0.2, 0.1, 1.0, 0.0]) * KM_PER_DEG  # 0.2 deg of equator; 0.1 deg from the pole;
    assert m["mean_km"] == pytest.approx(expected.mean(), rel=1e-6)  # 1 deg over the south pole; same point
    assert (m["acc_1km"], m["acc_25km"], m["acc_200km"]) == (0.25, 0.75, 1.0)  # 0, 11, 22 and 111 km


def test_unit_vectors_round_trip_and_average_across_the_dateline():
    lat = np.array([0.0, 45.0, -30.0, 89.0, 0.0])
    lon = np.array([180.0, -179.0, 10.0, 45.0, -90.0])
    back_lat, back_lon = geo.from_unit(geo.to_unit(lat, lon))
    assert geo.gcd_km(lat, lon, back_lat, back_lon) == pytest.approx(np.zeros(5), abs=1e-6)
    # The mean of 179 E and 179 W is on the dateline, not at the prime meridian.
    mid_lat, mid_lon = geo.from_unit(geo.spherical_mean(geo.to_unit([0.0, 0.0], [179.0, -179.0]))[None])
    assert mid_lat[0] == pytest.approx(0.0, abs=1e-9) and abs(mid_lon[0]) == pytest.approx(180.0)


def test_source_metrics_hand_computed():
    m = M.source_metrics(["a", "a", "b", "c"], ["a", "b", "b", "a"])
    assert m["accuracy"] == pytest.approx(0.5)
    # f1: a = 0.5 (1 of 2 predicted, 1 of 2 true), b = 2/3, c = 0
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert M.source_metrics(["x", "y"], ["x", "y"]) == {"accuracy": 1.0, "macro_f1": 1.0}


def test_popularity_metrics_hand_computed():
    true = np.log1p([0, 3, 10, 100])
    m = M.popularity_metrics(true, true + 0.5)
    assert m == {"spearman": pytest.approx(1.0), "mae_log": pytest.approx(0.5)}
    assert M.popularity_metrics(true, -true)["spearman"] == pytest.approx(-1.0)
    # Ranks only: any increasing transform keeps Spearman at 1.
    assert M.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    # A constant prediction ranks nothing: 0, not NaN (JSON cannot hold NaN).
    constant = M.popularity_metrics(true, np.full(4, 2.0))
    assert constant["spearman"] == 0.0
    assert constant["mae_log"] == pytest.approx(np.mean(np.abs(true - 2.0)))
    # Ties: scipy's average ranks, [1, 2.5, 2.5, 4] against [1, 2, 3, 4].
    assert M.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)


def test_beats_uses_the_main_metric_and_its_direction():
    geoloc, source, popularity = get("geoloc"), get("source"), get("popularity")
    assert (geoloc.main_metric, geoloc.higher_is_better) == ("mean_km", False)
    assert M.beats(geoloc, {"mean_km": 10.0}, {"mean_km": 11.0})
    assert not M.beats(geoloc, {"mean_km": 11.0}, {"mean_km": 11.0})
    assert not M.beats(geoloc, {"mean_km": 12.0, "acc_1km": 1.0}, {"mean_km": 11.0, "acc_1km": 0.0})
    assert M.beats(source, {"accuracy": 0.9}, {"accuracy": 0.8})
    assert not M.beats(popularity, {"spearman": 0.3}, {"spearman": 0.31})


def test_medoid_is_the_training_point_with_least_total_distance():
    from newsdl.tasks.geoloc import medoid

    # Three points near London and one in Sydney: the medoid is the middle London point.
    lat = np.array([51.5, 51.6, 51.7, -33.9])
    lon = np.array([-0.1, -0.1, -0.1, 151.2])
    assert medoid(lat, lon) == pytest.approx((51.6, -0.1))


def test_paired_bootstrap_intervals_are_paired_seeded_and_honest():
    """A system identical to the model differs by exactly 0 on every resample; one worse on every
    example has an interval clear of 0; a coin flip's interval spans 0; the same seed, the same."""
    rng = np.random.default_rng(0)
    n = 200
    truth = rng.integers(0, 2, n)
    systems = {"model": truth.copy(), "same": truth.copy(), "coin": rng.integers(0, 2, n),
               "always_wrong": 1 - truth}

    def resample(idx):
        return {name: {"accuracy": float(np.mean(pred[idx] == truth[idx]))} for name, pred in systems.items()}

    out = M.paired_bootstrap(resample, resample(np.arange(n)), n, ["accuracy"], seed=3, resamples=300)
    assert set(out) == {"same", "coin", "always_wrong"}
    assert out["same"]["accuracy"] == {"diff": 0.0, "ci95": [0.0, 0.0]}
    assert out["always_wrong"]["accuracy"]["diff"] == 1.0 and out["always_wrong"]["accuracy"]["ci95"] == [1.0, 1.0]
    lo, hi = out["coin"]["accuracy"]["ci95"]
    assert lo < out["coin"]["accuracy"]["diff"] < hi and 0.3 < out["coin"]["accuracy"]["diff"] < 0.7
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.25 / n), rel=0.35)  # the binomial's width
    assert M.paired_bootstrap(resample, resample(np.arange(n)), n, ["accuracy"], seed=3, resamples=300) == out
