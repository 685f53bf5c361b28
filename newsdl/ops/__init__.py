"""Custom TensorFlow ops: the great-circle distance (C++ CPU and CUDA kernels).

    from newsdl.ops import great_circle_distance, GreatCircleLoss, op_status

Importing this package imports neither TensorFlow nor Keras and builds nothing: the op
library is loaded, or built into the cache, on the first call. See README.md.
"""

from __future__ import annotations

__all__ = ["great_circle_distance", "GreatCircleLoss", "op_status", "EARTH_RADIUS_KM"]


def __getattr__(name: str):
    if name in ("great_circle_distance", "op_status", "EARTH_RADIUS_KM"):
        from newsdl.ops import gcd

        return getattr(gcd, name)
    if name == "GreatCircleLoss":
        from newsdl.ops.loss import GreatCircleLoss

        return GreatCircleLoss
    raise AttributeError(f"module 'newsdl.ops' has no attribute {name!r}")
