"""great_circle_distance: the custom op when it can be loaded, else its pure-TF twin.

The op library is found in the build cache or built on first use (build.py); if that
fails (no compiler, say) the same API runs fallback.py instead, with one warning.
Nothing here imports TensorFlow until the first call.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import warnings
from typing import Any

log = logging.getLogger("newsdl.ops")

# Mean Earth radius (IUGG), in km.
EARTH_RADIUS_KM = 6371.0088
BACKENDS = ("op", "tf")


@dataclasses.dataclass
class _Library:
    module: Any | None
    path: str | None
    cuda: bool
    reason: str


_lock = threading.Lock()
_library: _Library | None = None
_gradient_registered = False
_warned = False


def _forced_fallback() -> bool:
    return os.environ.get("NEWSDL_OPS_FALLBACK", "").strip() not in ("", "0")


def _load(build: bool = True) -> _Library | None:
    """The op library, loading (and with build=True, building) it once per process.

    Returns None only when build=False and nothing is built yet, so a later call may
    still build it.
    """
    global _library
    with _lock:
        if _library is not None:
            return _library
        if _forced_fallback():
            _library = _Library(None, None, False, "NEWSDL_OPS_FALLBACK is set")
            return _library
        try:
            import tensorflow as tf
        except ImportError as err:
            _library = _Library(None, None, False, f"TensorFlow does not import: {err}")
            return _library
        from newsdl.ops import build as builder

        try:
            built = builder.build() if build else builder.cached()
        except builder.BuildError as err:
            _library = _Library(None, None, False, f"the op library could not be built: {err}")
            return _library
        if built is None:
            return None
        try:
            module = tf.load_op_library(str(built.path))
        except (tf.errors.OpError, OSError) as err:
            _library = _Library(None, str(built.path), built.cuda, f"{built.path} does not load: {err}")
            return _library
        _register_gradient(module)
        _library = _Library(module, str(built.path), built.cuda, "")
        return _library


def _register_gradient(module) -> None:
    global _gradient_registered
    if _gradient_registered:
        return
    import tensorflow as tf

    # Bound now, not looked up as the module global _library at call time: AutoGraph, which
    # converts the gradient function inside a tf.function (custom training loops), does not see
    # globals assigned after import.
    grad_op = module.great_circle_distance_grad

    @tf.RegisterGradient("GreatCircleDistance")
    def _great_circle_distance_grad(op, grad_dist, grad_jac):
        # jac is the op's cache for this function, not a result: it has no gradient of
        # its own (second derivatives fail loudly: GreatCircleDistanceGrad has none).
        del grad_jac
        if grad_dist is None:
            return [None, None]
        grad_y, grad_z = grad_op(grad_dist, op.outputs[1])
        return [grad_y, grad_z]

    _gradient_registered = True


def op_status(build: bool = False) -> dict:
    """Whether the compiled op is in use: {loaded, path, cuda, reason}.

    With build=False (what `newsdl doctor` wants) nothing is compiled: a library already
    in the cache is loaded, else the reason says it is not built yet.
    """
    lib = _load(build=build)
    if lib is None:
        return {"loaded": False, "path": None, "cuda": False,
                "reason": "not built yet for this TensorFlow and compiler: run `newsdl ops build` "
                          "(or it builds on first use)"}
    return {"loaded": lib.module is not None, "path": lib.path, "cuda": lib.cuda, "reason": lib.reason}


def _op_module():
    """The loaded op module, or None after warning once that the fallback is in use."""
    global _warned
    lib = _load(build=True)
    if lib.module is not None:
        return lib.module
    if not _warned:
        _warned = True
        message = f"newsdl.ops: using the pure-TensorFlow great-circle distance ({lib.reason})"
        log.warning("%s", message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return None


def _in_xla_context() -> bool:
    try:
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # private modules; without them assume no XLA
        return False
    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def _check_shapes(y, z) -> None:
    """Shape errors as InvalidArgumentError on both paths, before anything broadcasts."""
    import tensorflow as tf

    def fail(why: str):
        raise tf.errors.InvalidArgumentError(
            None, None, f"great_circle_distance: {why}, got shapes {y.shape} and {z.shape}")

    if y.shape.rank == 0 or z.shape.rank == 0:
        fail("y_true and y_pred must have shape [..., 2] (lat, lon)")
    for shape in (y.shape, z.shape):
        if shape.rank is not None and shape[-1] is not None and shape[-1] != 2:
            fail("y_true and y_pred must have shape [..., 2] (lat, lon)")
    if not y.shape.is_compatible_with(z.shape):
        fail("y_true and y_pred must have the same shape")


def great_circle_distance(y_true, y_pred, degrees: bool = True,
                          radius_km: float | None = EARTH_RADIUS_KM, *, backend: str | None = None):
    """Great-circle distance between (lat, lon) pairs, differentiable in both arguments.

    y_true, y_pred: [..., 2] (lat, lon), in degrees (or radians with degrees=False), of
        the same shape; no broadcasting. float64 stays float64; anything else is
        computed in float32.
    radius_km: the sphere's radius; the result is in km. None returns the central angle
        in radians.
    backend: "op" (the compiled op, or an error), "tf" (plain TF ops), or None: the op
        when it loads, else plain TF with one warning. Inside an XLA-compiled function
        (jit_compile=True, Keras' default on GPU) None picks plain TF, which XLA can
        compile; the op cannot be.
    Returns [...] distances. Raises InvalidArgumentError on mismatched shapes.
    """
    import tensorflow as tf

    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    z = tf.convert_to_tensor(y_pred)
    if z.dtype != tf.float64:
        z = tf.cast(z, tf.float32)
    y = tf.cast(tf.convert_to_tensor(y_true), z.dtype)
    _check_shapes(y, z)

    module = None
    if backend == "op":
        module = _load(build=True).module
        if module is None:
            raise RuntimeError(f"backend='op' but the op is unavailable: {_library.reason}")
    elif backend is None and not _in_xla_context():
        module = _op_module()

    if module is not None:
        dist, _ = module.great_circle_distance(y, z, degrees=degrees)
    else:
        from newsdl.ops import fallback

        if not (y.shape.is_fully_defined() and z.shape.is_fully_defined()):
            # The op's kernel checks shapes at run time; plain TF would broadcast instead.
            with tf.control_dependencies([tf.debugging.assert_equal(
                    tf.shape(y), tf.shape(z), message="great_circle_distance: shapes differ"),
                    tf.debugging.assert_equal(tf.shape(y)[-1], 2, message="great_circle_distance: "
                                              "the last dimension must be 2 (lat, lon)")]):
                y = tf.identity(y)
        dist = fallback.central_angle(y, z, degrees)
    if radius_km is not None:
        dist = dist * tf.constant(radius_km, dist.dtype)
    return dist
