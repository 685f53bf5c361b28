"""Shared by the tests of newsdl.ops: the op library (built once per session) and references."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from newsdl.ops import reference

BOUNDS = {"float32": 2e-6, "float64": 1e-12}
BACKENDS = ("op", "tf")


@functools.lru_cache(maxsize=None)
def _op_module():
    from newsdl.ops import build, gcd

    if build.find_cxx() is None:
        return None
    lib = gcd._load(build=True)
    # A compiler is here, so the op must build and load: a failure is a test failure.
    assert lib.module is not None, lib.reason
    return lib.module


def require_op():
    """The loaded op module; skips only where no C++ compiler exists at all."""
    module = _op_module()
    if module is None:
        pytest.skip("no C++ compiler: only the fallback can be tested here")
    return module


def need_backend(backend: str) -> None:
    if backend == "op":
        require_op()


@functools.lru_cache(maxsize=None)
def hard_pairs(dtype: str, n_random: int = 1000):
    """(y, z, exact distance, exact partials) for the float values of `dtype`."""
    y64, z64 = reference.hard_pairs(np.random.default_rng(20240611), n_random)
    y, z = y64.astype(dtype), z64.astype(dtype)
    dist, partials = reference.mp_distance_and_partials(y, z)
    return y, z, dist, partials


def distance_and_grads(y, z, backend, degrees=False, radius_km=None):
    """(d, d/dy, d/dz) as numpy, through great_circle_distance under a GradientTape."""
    import tensorflow as tf

    from newsdl.ops import great_circle_distance

    y, z = tf.convert_to_tensor(y), tf.convert_to_tensor(z)
    with tf.GradientTape() as tape:
        tape.watch([y, z])
        d = great_circle_distance(y, z, degrees=degrees, radius_km=radius_km, backend=backend)
    gy, gz = tape.gradient(d, [y, z])
    return d.numpy(), gy.numpy(), gz.numpy()
