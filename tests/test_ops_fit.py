"""GreatCircleLoss in model.fit: the loss falls, with and without XLA."""

from __future__ import annotations

import numpy as np
import pytest

from ops_helpers import require_op

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from newsdl.ops import GreatCircleLoss, gcd  # noqa: E402


def _data(n=512, seed=0):
    """Places on a smooth map of 4 features to (lat, lon) in degrees."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    lat = 40 * np.tanh(x[:, 0] + 0.5 * x[:, 1])
    lon = 120 * np.tanh(0.7 * x[:, 2] - 0.4 * x[:, 3])
    return x, np.stack([lat, lon], axis=-1).astype(np.float32)


def _fit(jit_compile: bool, monkeypatch) -> tuple[list[float], list[bool]]:
    seen_xla = []
    original = gcd._in_xla_context

    def spy():
        seen_xla.append(original())
        return seen_xla[-1]

    monkeypatch.setattr(gcd, "_in_xla_context", spy)
    keras.utils.set_random_seed(0)
    x, y = _data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(32, activation="tanh"),
                              keras.layers.Dense(2)])
    # The head predicts degrees directly; a larger learning rate suits their scale.
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=GreatCircleLoss(), jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=64, epochs=8, verbose=0)
    return history.history["loss"], seen_xla


def test_fit_with_the_op_loss_falls(monkeypatch):
    require_op()
    losses, seen_xla = _fit(jit_compile=False, monkeypatch=monkeypatch)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert seen_xla and not any(seen_xla)  # traced outside XLA: the custom op ran


@pytest.fixture
def op_determinism_off():
    """Keras quietly drops jit_compile while TF's op determinism is on, and an earlier test that
    trained in this process (newsdl's training enables it for reproducible CPU runs) leaves it on."""
    from tensorflow.python.framework import config

    was_on = config.is_op_determinism_enabled()
    config.disable_op_determinism()
    yield
    if was_on:
        config.enable_op_determinism()


def test_fit_under_xla_routes_to_plain_tf_and_falls(monkeypatch, op_determinism_off):
    losses, seen_xla = _fit(jit_compile=True, monkeypatch=monkeypatch)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert seen_xla and all(seen_xla)


def test_loss_value_config_and_round_trip():
    loss = GreatCircleLoss(degrees=True, radius_km=1.0, name="gcd")
    y = np.array([[0.0, 0.0], [0.0, 0.0]], np.float32)
    p = np.array([[0.0, 90.0], [0.0, 0.0]], np.float32)
    assert float(loss(y, p)) == pytest.approx(np.pi / 4, rel=1e-6)  # mean of pi/2 and 0
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, GreatCircleLoss)
    assert clone.get_config()["radius_km"] == 1.0 and clone.degrees is True
    assert float(clone(y, p)) == pytest.approx(float(loss(y, p)))
