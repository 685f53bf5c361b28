"""Illustrate task: ranks and recall@K on hand-built similarity matrices, batched ranking equal to
the per-query loop, CCA recovering a planted correlation (and its .npz round trip), and
train/evaluate/predict end to end on the small featurized workspace."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_tasks_support import (check_resume_keeps_the_count, check_run_folder, copy_workspace,  # noqa: F401
                                featurized_workspace)


def test_ranks_and_recall_on_hand_built_matrices():
    from newsdl.tasks import retrieval as R

    sim = np.array([[0.9, 0.1, 0.5],
                    [0.8, 0.2, 0.3],
                    [0.1, 0.4, 0.7]])
    assert R.ranks_from_similarity(sim).tolist() == [1.0, 3.0, 1.0]
    assert R.ranks_from_similarity(sim.T).tolist() == [1.0, 2.0, 1.0]
    m = {**R.recall_metrics(R.ranks_from_similarity(sim)),
         "image_to_text": R.recall_metrics(R.ranks_from_similarity(sim.T))}
    assert m["recall_at_1"] == pytest.approx(2 / 3) and m["recall_at_5"] == 1.0 and m["median_rank"] == 1.0
    assert m["image_to_text"] == {"recall_at_1": pytest.approx(2 / 3), "recall_at_5": 1.0, "recall_at_10": 1.0,
                                  "median_rank": 1.0}
    # A constant scorer knows nothing: every item gets the mid-rank of the ties, not rank 1.
    assert R.ranks_from_similarity(np.ones((4, 4))).tolist() == [2.5] * 4
    # The identity is perfect retrieval; its reverse permutation puts every correct item last but one.
    n = 20
    assert R.recall_metrics(R.ranks_from_similarity(np.eye(n)))["median_rank"] == 1.0
    worst = R.recall_metrics(R.ranks_from_similarity(-np.eye(n)))
    assert worst["recall_at_10"] == 0.0 and worst["median_rank"] == n


def test_batched_ranking_equals_the_per_query_loop():
    from newsdl.tasks import retrieval as R

    rng = np.random.default_rng(0)
    q, c = R.unit(rng.normal(size=(300, 16))), R.unit(rng.normal(size=(300, 16)))
    c[:150] = R.unit(q[:150] + 0.3 * rng.normal(size=(150, 16)))  # half the pairs related
    batched = R.ranks(q, c, block=64)  # several blocks, the last one partial
    naive = R.ranks_naive(q, c)
    # A product and matrix-vector products may round a near-tie differently; nothing more.
    assert np.mean(batched == naive) >= 0.99 and np.max(np.abs(batched - naive)) <= 1
    np.testing.assert_array_equal(batched, R.ranks_from_similarity(q @ c.T))
    assert np.median(batched[:150]) < 5 < np.median(batched[150:])


def _planted(n, rng, dx=20, dy=30, rho=(0.95, 0.8)):
    """x and y sharing two latent signals with the given correlations, mixed by fixed random rotations."""
    z = rng.normal(size=(n, len(rho)))
    x = rng.normal(size=(n, dx))
    y = rng.normal(size=(n, dy))
    for k, r in enumerate(rho):
        # corr(x_k, y_k) = r when both are sqrt(r) z + sqrt(1 - r) noise.
        x[:, k] = np.sqrt(r) * z[:, k] + np.sqrt(1 - r) * rng.normal(size=n)
        y[:, k] = np.sqrt(r) * z[:, k] + np.sqrt(1 - r) * rng.normal(size=n)
    fixed = np.random.default_rng(99)  # the same mixing for training and new data
    qx, _ = np.linalg.qr(fixed.normal(size=(dx, dx)))
    qy, _ = np.linalg.qr(fixed.normal(size=(dy, dy)))
    return x @ qx * fixed.uniform(0.5, 3, dx), y @ qy * fixed.uniform(0.5, 3, dy)


def test_cca_recovers_a_planted_correlation(tmp_path):
    from newsdl.errors import UserError
    from newsdl.tasks import retrieval as R

    rng = np.random.default_rng(1)
    x, y = _planted(4000, rng)
    cca = R.CCA.fit_regs(x, y, [1e-6], dims=5)[0]
    np.testing.assert_allclose(cca.corr[:2], [0.95, 0.8], atol=0.02)
    assert np.all(cca.corr[2:] < 0.2)  # chance canonical correlations of 18 x 28 noise dims at n=4000
    # On new data, the canonical variates have the planted correlations too.
    xt, yt = _planted(2000, np.random.default_rng(2))
    u = (xt - cca.mean_x) @ cca.wx
    v = (yt - cca.mean_y) @ cca.wy
    assert abs(np.corrcoef(u[:, 0], v[:, 0])[0, 1]) == pytest.approx(0.95, abs=0.03)
    # More dimensions than rows (FC7 is 4096-d): the Gram-matrix path gives the same directions'
    # correlations on the training pairs, and regularisation keeps them below 1.
    small = R.CCA.fit_regs(x[:60], np.hstack([y[:60], rng.normal(size=(60, 100))]), [0.1], dims=3)[0]
    assert small.wy.shape == (130, 3) and np.all(small.corr <= 1.0) and small.corr[0] > 0.9
    # The projection round-trips through .npz (no pickle); a pickled file is refused.
    cca.save(tmp_path / "cca.npz")
    back = R.CCA.load(tmp_path / "cca.npz")
    np.testing.assert_array_equal(back.wx, cca.wx)
    np.save(tmp_path / "bad.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "bad.npz").write_bytes((tmp_path / "bad.npy").read_bytes())
    with pytest.raises(UserError, match="bad.npz"):
        R.CCA.load(tmp_path / "bad.npz")


@pytest.mark.slow
def test_illustrate_end_to_end(featurized_workspace, sample_corpus, tmp_path):  # noqa: F811
    from newsdl.tasks import evaluate_task, format_table, get, predict_task, train_task

    task = get("illustrate")
    ws = copy_workspace(featurized_workspace, tmp_path / "ws")
    summary = train_task(ws, "illustrate", epochs=2, batch_size=16, seed=7)
    folder = ws / "models" / "illustrate"
    assert summary["epochs_run"] <= 2 and summary["n_train"] > 0 and summary["head"] == "two-tower"
    assert summary["monitor"] == "val_recall_at_10" and 0.0 <= summary["val_best"] <= 1.0
    assert 0.0 <= summary["cca_val_recall_at_10"] <= 1.0 and summary["features"] == ["w2v_mean", "w2v_max", "fc7"]
    check_run_folder(folder, "two-tower")
    history = (folder / "history.csv").read_text().splitlines()
    assert "val_recall_at_10" in history[0].split(",") and len(history) == 1 + summary["epochs_run"]
    metrics = evaluate_task(ws, "illustrate")
    keys = list(task.metric_keys)
    assert metrics["task"] == "illustrate" and metrics["n_test"] >= 2
    assert set(metrics["baselines"]) == {"cca", "random"}
    for scores in [metrics["test"], *metrics["baselines"].values()]:
        assert list(scores) == [*keys, "image_to_text"] and list(scores["image_to_text"]) == keys
        for s in (scores, scores["image_to_text"]):
            assert s["recall_at_1"] <= s["recall_at_5"] <= s["recall_at_10"] <= 1.0
            assert 1.0 <= s["median_rank"] <= metrics["n_test"]
    assert metrics["main_metric"] == "recall_at_10"
    table = format_table(metrics)
    assert "recall_at_10*" in table and "image_to_text" in table
    for name in ("model.keras", "cca.npz", "config.json", "metrics.json", "recall_at_k.png", "manifest.json"):
        assert (folder / name).is_file(), name
    assert (folder / "recall_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = task.load_model(folder / "model.keras")
    assert list(model.output) == ["embeddings"]
    assert train_task(ws, "illustrate", epochs=2, batch_size=16, seed=7)["skipped"] is True
    assert evaluate_task(ws, "illustrate") == metrics

    out = tmp_path / "ranked.jsonl"
    r = predict_task(ws, "illustrate", sample_corpus / "articles.jsonl", out=out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    articles = [x for x in rows if x["kind"] == "article"]
    assert r["predicted"] == len(articles) > 0 and any(x["kind"] == "image" for x in rows)
    scores = [i["score"] for i in articles[0]["images"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == min(10, sum(x["kind"] == "image" for x in rows))


@pytest.mark.slow
def test_a_resumed_illustrate_run_keeps_its_early_stopping_count(featurized_workspace, tmp_path):  # noqa: F811
    """Kill illustrate training (early stopping on a value to maximise) once the epoch before early
    stopping ends it is checkpointed: the resumed run trains one epoch and stops, as the
    uninterrupted run did, instead of counting patience from zero; same history and weights."""
    summary = check_resume_keeps_the_count(
        featurized_workspace, tmp_path, "illustrate",
        # Small batches: an epoch of many steps, that the kill lands in.
        ["--epochs", "15", "--patience", "3", "--batch-size", "4", "--seed", "3"])
    assert summary["head"] == "two-tower" and summary["monitor"] == "val_recall_at_10"
