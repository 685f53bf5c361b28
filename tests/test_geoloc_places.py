"""geoloc's place decision (cells' real places, named places merged, a threshold fitted on val)
and source's late fusion and temperature scaling, on hand-built cases and one small training."""

from __future__ import annotations

import numpy as np
import pytest

from newsdl import geo


def test_each_cell_is_its_most_frequent_training_place():
    from newsdl.tasks.geoloc import cell_places

    lat = np.array([48.8566, 48.8566, 48.9, 51.5074, 51.5074, 51.4])
    lon = np.array([2.3522, 2.3522, 2.4, -0.1278, -0.1278, -0.2])
    cells = geo.to_unit([48.87, 51.47, -33.9], [2.37, -0.15, 151.2]).tolist()  # the third holds nothing
    places = cell_places(cells, lat, lon)
    assert places[0] == [48.8566, 2.3522] and places[1] == [51.5074, -0.1278]
    assert places[2] == pytest.approx([-33.9, 151.2], abs=1e-3)  # an empty cell keeps its centre


def test_a_place_with_enough_mass_is_named_else_the_hedge_stays():
    from newsdl.tasks.geoloc import decide_places, place_support

    paris, rome = geo.to_unit([48.8566, 41.9], [2.3522, 12.5])
    # The named Paris (0.25) and the cell whose place is a Paris suburb (0.5 x 0.4 = 0.2) are one
    # place, with 0.45 between them; Rome has 0.25, the other cell's place 0.3.
    outputs = {"latlon": np.array([[46.0, 5.0]]), "trust": np.array([[0.5, 0.25, 0.25]]),
               "gaz_places": np.array([[paris, rome]]), "cell": np.array([[0.4, 0.6]])}
    fitted = {"cell_places": [[48.90, 2.35], [0.0, 0.0]]}
    points, support = place_support(outputs, fitted)
    assert points.shape == (1, 4, 2)
    assert support[0].tolist() == pytest.approx([0.45, 0.25, 0.3, 0.45])  # cells: the likelier first
    lat, lon = decide_places(outputs["latlon"], points, support, 0.4)
    assert (lat[0], lon[0]) == pytest.approx((48.8566, 2.3522), abs=1e-6)  # a real place, exactly
    lat, lon = decide_places(outputs["latlon"], points, support, 0.5)
    assert (lat[0], lon[0]) == (46.0, 5.0)  # nothing likely enough: the mean-km-optimal point
    assert decide_places(outputs["latlon"], points, support, None)[0].tolist() == [46.0]


def test_an_outlets_home_is_its_most_frequent_place_and_leaves_each_story_out():
    from newsdl.tasks.geoloc import candidate_arrays, home_inputs, outlet_homes

    richmond_in, richmond_va = (39.8289, -84.8902), (37.5538, -77.4603)
    source = np.array(["pal-item.com"] * 3 + ["timesdispatch.com"] * 2 + [None], dtype=object)
    lat = np.array([richmond_in[0]] * 2 + [richmond_va[0]] * 3 + [0.0])
    lon = np.array([richmond_in[1]] * 2 + [richmond_va[1]] * 3 + [0.0])
    homes = outlet_homes(source, lat, lon)
    # Two stories are too few to tell a paper's town (OUTLET_HOME_MIN = 3); no outlet, no home.
    assert homes == {"pal-item.com": [richmond_in[0], richmond_in[1], 2, 3]}
    training = np.array([True, True, True, False, False, False])
    x = home_inputs(source, lat, lon, training, homes)
    assert x["home_mask"][:, 0].tolist() == [1, 1, 1, 0, 0, 0]
    assert np.allclose(x["home_xyz"][0, 0], geo.to_unit(*richmond_in))
    # A training story at home counts neither itself nor its outlet's size: 1 of 2 others there;
    # the one away sees both others at home.
    assert x["home_feat"][0].tolist() == pytest.approx([np.log1p(2), 0.5])
    assert x["home_feat"][2].tolist() == pytest.approx([np.log1p(2), 1.0])
    new = home_inputs(source[:1], lat[:1], lon[:1], np.array([False]), homes)  # a new story: all 3
    assert new["home_feat"][0].tolist() == pytest.approx([np.log1p(3), 2 / 3])
    xyz, mask = candidate_arrays({"gaz_xyz": np.zeros((6, 3, 3)), "gaz_mask": np.ones((6, 3)), **x})
    assert xyz.shape == (6, 4, 3) and mask[:, 3].tolist() == x["home_mask"][:, 0].tolist()


@pytest.mark.slow
def test_on_a_few_cities_most_predictions_land_exactly_on_one(tmp_path):
    """Every label is one of four cities: the model names them, not points between them."""
    from newsdl.features import run_featurize
    from newsdl.tasks import get, train_task
    from newsdl.tasks.articles import predict_outputs
    from newsdl.tasks.data import load_corpus
    from newsdl.tasks.task import read_saved
    from testdata import lee_articles, write_ingest
    from test_tasks_support import FAST_FEATURIZE

    cities = {"Perth": (-31.95224, 115.8614), "Darwin": (-12.46113, 130.84185),
              "Hobart": (-42.87936, 147.32941), "Cairns": (-16.92366, 145.76613)}
    names = list(cities)
    rng = np.random.default_rng(0)
    articles = []
    for k, a in enumerate(lee_articles(200_000)[:800]):
        city = names[k % 4]
        # Short stories (a Lee article's first sentence), most of which name their city.
        said = f" Officials in {city} said more would follow." if rng.random() < 0.8 else ""
        text = a["text"].split(". ")[0] + "." + said
        articles.append({**a, "text": text, "lat": cities[city][0], "lon": cities[city][1]})
    ws = tmp_path / "ws"
    write_ingest(ws, articles, None)
    run_featurize(ws, images=False, **{k: v for k, v in FAST_FEATURIZE.items()
                                      if k in ("vector_size", "min_count", "epochs")})
    # Without the gazetteer, only the cells can name a place: the decision under test.
    train_task(ws, "geoloc", features="w2v_mean,w2v_max,bow", epochs=10, batch_size=16, seed=7, head="cells")
    task = get("geoloc")
    saved = read_saved(ws, task)
    assert "place_threshold" in saved.fitted["calibration"]
    corpus = load_corpus(ws)
    test = np.flatnonzero(corpus.split == "test")
    x = task.inputs(corpus, saved.config["features"], saved.fitted)
    out = predict_outputs(task.load_model(saved.folder / "model.keras"), x, test, 64)
    pred = task.decode(out, saved.fitted)
    c_lat, c_lon = np.array(list(cities.values())).T
    km = geo.gcd_km(pred["lat"][:, None], pred["lon"][:, None], c_lat[None, :], c_lon[None, :]).min(axis=1)
    assert np.mean(km < 0.01) >= 0.75, np.round(km, 1)


def test_temperature_scaling_recovers_the_temperature():
    from newsdl.tasks.source import fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (4000, 5))
    p = np.exp(z / 2.0)
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature(z, y) == pytest.approx(2.0, rel=0.1)


def test_fusion_falls_back_on_the_better_part():
    from newsdl.tasks.source import fit_fusion

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 500)
    right = np.eye(4)[y] * 4.0 + rng.normal(0, 0.5, (500, 4))  # log-scores that get y right
    noise = rng.normal(0, 2.0, (500, 4))
    w, t = fit_fusion(noise, right, y)
    assert w == 0.0 and t > 0  # the deep part is noise: the linear part alone
    w, _ = fit_fusion(right, noise, y)
    assert w == 1.0
    w, t = fit_fusion(right, None, y)  # no linear part: only the temperature
    assert w == 1.0 and 0.05 <= t <= 20
