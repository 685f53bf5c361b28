"""The great-circle distance op and its fallback: accuracy, gradients, shapes."""

from __future__ import annotations

import numpy as np
import pytest

from ops_helpers import BACKENDS, BOUNDS, distance_and_grads, hard_pairs, need_backend, require_op

tf = pytest.importorskip("tensorflow")

from newsdl.ops import great_circle_distance  # noqa: E402
from newsdl.ops.reference import numpy_forward  # noqa: E402

DTYPES = ("float32", "float64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_distance_within_bound_of_mpmath(backend, dtype):
    need_backend(backend)
    y, z, exact, _ = hard_pairs(dtype)
    d = great_circle_distance(y, z, degrees=False, radius_km=None, backend=backend).numpy()
    assert d.dtype == np.dtype(dtype)
    err = np.abs(d.astype(np.float64) - exact)
    assert err.max() <= BOUNDS[dtype], f"worst pair {y[err.argmax()]} {z[err.argmax()]}: {err.max():.3g}"
    # Near 0 the error must also be small relative to the distance: the reason for atan2.
    eps = np.finfo(dtype).eps
    close = exact < 1e-2
    assert close.sum() > 300
    assert np.all(err[close] <= 8 * eps * exact[close]), np.max(err[close] / (exact[close] + 1e-300))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_degrees_path_matches_radians(backend, dtype):
    need_backend(backend)
    y, z, _, _ = hard_pairs(dtype)
    y_deg, z_deg = np.degrees(y.astype(np.float64)), np.degrees(z.astype(np.float64))
    from newsdl.ops.reference import mp_distance_and_partials

    exact, _ = mp_distance_and_partials(np.radians(y_deg.astype(dtype).astype(np.float64)),
                                        np.radians(z_deg.astype(dtype).astype(np.float64)))
    km = great_circle_distance(y_deg.astype(dtype), z_deg.astype(dtype), backend=backend).numpy()
    err = np.abs(km.astype(np.float64) / 6371.0088 - exact)
    assert err.max() <= 2 * BOUNDS[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_partials_match_mpmath_and_are_finite(backend, dtype):
    need_backend(backend)
    y, z, exact, partials = hard_pairs(dtype)
    _, gy, gz = distance_and_grads(y, z, backend)
    assert np.isfinite(gy).all() and np.isfinite(gz).all()
    got = np.concatenate([gy, gz], axis=1).astype(np.float64)
    err = np.abs(got - partials).max(axis=1)
    eps = np.finfo(dtype).eps
    # Each end's gradient is a unit tangent (or 0), so no partial exceeds 1, anywhere.
    assert np.abs(got).max() <= 1 + 4 * eps
    near = exact < np.pi / 2
    # Up to pi/2 the partials are accurate in absolute terms, even metres apart: the
    # cancellation-free form. Towards the antipode the direction is ill-conditioned
    # (1 / sin d), as it is for the exact function of rounded inputs.
    assert err[near].max() <= 16 * eps, err[near].max()
    assert (err[~near] * np.sin(exact[~near])).max() <= 16 * eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_is_zero_at_coincident_points(backend, dtype):
    need_backend(backend)
    pts = np.array([[0.3, 1.2], [-1.5707963267948966, 0.0], [0.0, np.pi], [1.0, -2.0]], dtype)
    d, gy, gz = distance_and_grads(pts, pts.copy(), backend)
    assert np.all(d == 0)
    assert np.all(gy == 0) and np.all(gz == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("degrees", [False, True])
def test_gradient_matches_finite_differences(backend, degrees):
    need_backend(backend)
    rng = np.random.default_rng(7)
    y = np.stack([rng.uniform(-1.4, 1.4, 24), rng.uniform(-3, 3, 24)], axis=-1)
    z = np.stack([rng.uniform(-1.4, 1.4, 24), rng.uniform(-3, 3, 24)], axis=-1)
    exact = numpy_forward(y, z)[0]
    keep = (exact > 0.05) & (exact < np.pi - 0.05)  # away from the two kinks
    y, z = y[keep], z[keep]
    if degrees:
        y, z = np.degrees(y), np.degrees(z)

    def f(a, b):
        return great_circle_distance(a, b, degrees=degrees, radius_km=6371.0088, backend=backend)

    # Central differences with a small step: their own error is ~1e-10 relative here.
    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(y), tf.constant(z)], delta=1e-5)
    for t, n in zip(theoretical, numerical):
        scale = max(1.0, np.abs(n).max())
        assert np.abs(t - n).max() <= 1e-6 * scale


@pytest.mark.parametrize("dtype", DTYPES)
def test_op_and_fallback_agree(dtype):
    require_op()
    rng = np.random.default_rng(3)
    y = rng.uniform(-90, 90, (5, 333, 2)).astype(dtype)
    z = rng.uniform(-180, 180, (5, 333, 2)).astype(dtype)
    a = distance_and_grads(y, z, "op", degrees=True, radius_km=6371.0088)
    b = distance_and_grads(y, z, "tf", degrees=True, radius_km=6371.0088)
    tol = {"float32": 5e-6, "float64": 1e-13}[dtype]
    np.testing.assert_allclose(a[0], b[0], rtol=tol, atol=tol * 6371)
    for ga, gb in zip(a[1:], b[1:]):
        np.testing.assert_allclose(ga, gb, rtol=0, atol=tol * 6371)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_batch_scalar_and_empty(backend):
    need_backend(backend)
    rng = np.random.default_rng(0)
    for shape in [(3, 4, 2), (2,), (0, 2), (2, 0, 2), (1, 1, 1, 2)]:
        y = rng.uniform(-1, 1, shape).astype(np.float32)
        z = rng.uniform(-1, 1, shape).astype(np.float32)
        d, gy, gz = distance_and_grads(y, z, backend)
        assert d.shape == shape[:-1]
        assert gy.shape == shape and gz.shape == shape
        flat = numpy_forward(y.reshape(-1, 2), z.reshape(-1, 2))[0].reshape(shape[:-1])
        np.testing.assert_allclose(d, flat, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatched_shapes_raise_invalid_argument(backend):
    need_backend(backend)
    a = np.zeros((3, 2), np.float32)
    for other in (np.zeros((4, 2), np.float32), np.zeros((3, 3), np.float32),
                  np.zeros((1, 2), np.float32), np.zeros((3, 1, 2), np.float32)):
        with pytest.raises(tf.errors.InvalidArgumentError):
            great_circle_distance(a, other, backend=backend)
    with pytest.raises(tf.errors.InvalidArgumentError):
        great_circle_distance(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float32), backend=backend)

    # Shapes unknown when traced: the check happens at run time.
    spec = tf.TensorSpec([None, None], tf.float32)
    fn = tf.function(lambda y, z: great_circle_distance(y, z, backend=backend),
                     input_signature=[spec, spec])
    assert fn(a, a + 1).shape == (3,)
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(a, np.zeros((4, 2), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float32))


def test_kernels_check_shapes_themselves():
    """The raw ops, without the Python wrapper's checks, reject bad shapes too."""
    module = require_op()
    with pytest.raises(tf.errors.InvalidArgumentError):
        module.great_circle_distance(tf.zeros([3, 2]), tf.zeros([4, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        module.great_circle_distance(tf.zeros([3, 3]), tf.zeros([3, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        module.great_circle_distance_grad(tf.zeros([3]), tf.zeros([2, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        module.great_circle_distance_grad(tf.zeros([3]), tf.zeros([3, 4]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_and_tf_function_agree_and_dtypes(backend):
    need_backend(backend)
    y = np.array([[48.8566, 2.3522], [-33.8688, 151.2093]])  # Paris, Sydney
    z = np.array([[40.7128, -74.0060], [35.6762, 139.6503]])  # New York, Tokyo
    eager = great_circle_distance(y, z, backend=backend)
    assert eager.dtype == tf.float64
    # The haversine package's values, in km (same radius).
    np.testing.assert_allclose(eager.numpy(), [5837.248966566374, 7825.829425997216], rtol=1e-12)
    graph = tf.function(lambda a, b: great_circle_distance(a, b, backend=backend))(y, z)
    np.testing.assert_array_equal(eager.numpy(), graph.numpy())
    assert great_circle_distance(y.astype(np.float16), z.astype(np.float16), backend=backend).dtype == tf.float32
    assert great_circle_distance(y.astype(np.float32), z, backend=backend).dtype == tf.float64
    assert great_circle_distance(y.astype(np.int32), z.astype(np.int32), backend=backend).dtype == tf.float32


def test_under_xla_the_auto_backend_uses_plain_tf():
    require_op()
    rng = np.random.default_rng(1)
    y, z = rng.uniform(-80, 80, (64, 2)), rng.uniform(-80, 80, (64, 2))

    @tf.function(jit_compile=True)
    def xla(a, b):
        with tf.GradientTape() as tape:
            tape.watch(b)
            d = great_circle_distance(a, b)
        return d, tape.gradient(d, b)

    d_xla, g_xla = xla(y, z)
    d_op, _, g_op = distance_and_grads(y, z, "op", degrees=True, radius_km=6371.0088)
    np.testing.assert_allclose(d_xla.numpy(), d_op, rtol=1e-12)
    np.testing.assert_allclose(g_xla.numpy(), g_op, rtol=1e-10, atol=1e-12)


def test_second_derivatives_fail_loudly():
    """jac is the gradient's cache, not differentiable: a Hessian must not be silently wrong."""
    require_op()
    y = tf.constant([[0.1, 0.2]], tf.float64)
    z = tf.constant([[0.5, 0.9]], tf.float64)
    with pytest.raises(LookupError):
        with tf.GradientTape() as outer:
            outer.watch(z)
            with tf.GradientTape() as inner:
                inner.watch(z)
                d = great_circle_distance(y, z, degrees=False, backend="op")
            g = inner.gradient(d, z)
        outer.gradient(g, z)


def test_gradient_when_the_op_first_loads_inside_an_autograph_function(tmp_path):
    """Custom training loops (distributed training) first touch the op inside a tf.function, where
    AutoGraph converts the loader: the gradient must not depend on module globals it assigns."""
    require_op()
    import subprocess
    import sys

    script = tmp_path / "first_use.py"
    script.write_text(
        "import numpy as np, tensorflow as tf\n"
        "from newsdl.ops import great_circle_distance\n"
        "y = tf.constant([[48.8566, 2.3522]], tf.float64)\n"
        "z = tf.Variable([[40.7128, -74.0060]], dtype=tf.float64)\n"
        "@tf.function\n"
        "def step():\n"
        "    with tf.GradientTape() as tape:\n"
        "        d = tf.reduce_sum(great_circle_distance(y, z, backend='op'))\n"
        "    return d, tape.gradient(d, z)\n"
        "d, g = step()\n"
        "print(repr(float(d)), repr(g.numpy().tolist()))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    d, g = out.stdout.strip().splitlines()[-1].split(" ", 1)
    _, _, g_eager = distance_and_grads(np.array([[48.8566, 2.3522]]), np.array([[40.7128, -74.0060]]), "op",
                                       degrees=True, radius_km=6371.0088)
    np.testing.assert_allclose(float(d), 5837.248966566374, rtol=1e-12)
    np.testing.assert_allclose(np.array(eval(g)), g_eager, rtol=1e-10)
