"""The great-circle distance in plain TensorFlow ops: the op's formula, step for step.

Used where the compiled op cannot be: no compiler, NEWSDL_OPS_FALLBACK=1, or inside an
XLA-compiled function (XLA cannot compile a custom op, but it fuses these ops well). The
numerics are those of cc/kernels/gcd_math.h, with TensorFlow's sin, cos and atan2 in
place of the polynomials, and the same gradient (0 where the points coincide) through
tf.custom_gradient.
"""

from __future__ import annotations

import math

import tensorflow as tf

# 2 pi in three parts, m * part exact for small m: gcd_math.h's 4 * (P1, P2, P3).
TWO_PI_PARTS = {
    tf.float32: (6.28125, 1.93500518798828125e-3, 3.019915981956752864e-7),
    tf.float64: (6.28318500518798828124, 3.019915766344638541e-7, 2.15612114326324762116e-14),
}


def central_angle(y: tf.Tensor, z: tf.Tensor, degrees: bool) -> tf.Tensor:
    """Central angle in radians between y and z ([..., 2] lat, lon), differentiable in both."""

    @tf.custom_gradient
    def gcd(y, z):
        dist, j_ylat, j_zlat, j_zlon = forward(y, z, degrees)

        def grad(g):
            g_lon = g * j_zlon
            return tf.stack([g * j_ylat, -g_lon], axis=-1), tf.stack([g * j_zlat, g_lon], axis=-1)

        return dist, grad

    return gcd(y, z)


def forward(y: tf.Tensor, z: tf.Tensor, degrees: bool):
    """(dist, d dist/d y_lat, d dist/d z_lat, d dist/d z_lon), as gcd_math.h's forward()."""
    dt = y.dtype
    k = tf.constant(math.pi / 180 if degrees else 1.0, dt)
    ylat, ylon = tf.unstack(y, 2, axis=-1)
    zlat, zlon = tf.unstack(z, 2, axis=-1)
    dlat = (zlat - ylat) * k
    half_dlon = _wrapped_dlon(ylon, zlon, degrees) * (0.5 * k)
    s1, c1 = tf.sin(ylat * k), tf.cos(ylat * k)
    s2, c2 = tf.sin(zlat * k), tf.cos(zlat * k)
    sh, ch = tf.sin(half_dlon), tf.cos(half_dlon)
    sp, cp = tf.sin(dlat), tf.cos(dlat)
    sin_dlon, vers_dlon = 2 * sh * ch, 2 * sh * sh
    a = c2 * sin_dlon
    b = sp + s1 * c2 * vers_dlon
    c = c1 * s2 * vers_dlon - sp
    cos_d = cp - c1 * c2 * vers_dlon
    n_y = tf.sqrt(a * a + b * b)
    a_z = c1 * sin_dlon
    n_z = tf.sqrt(a_z * a_z + c * c)
    dist = tf.atan2(n_y, cos_d)
    # 0 where the norm is 0: the gradient at coincident points.
    inv_y, inv_z = tf.math.divide_no_nan(k, n_y), tf.math.divide_no_nan(k, n_z)
    return dist, -b * inv_y, -c * inv_z, c1 * a * inv_y


def _wrapped_dlon(ylon: tf.Tensor, zlon: tf.Tensor, degrees: bool) -> tf.Tensor:
    """zlon - ylon wrapped by whole turns, keeping the subtraction's rounding error (TwoSum)."""
    s = zlon - ylon
    bp = s - zlon
    err = (zlon - (s - bp)) + (-ylon - bp)
    if degrees:
        return (s - tf.round(s / 360.0) * 360.0) + err
    p1, p2, p3 = (tf.constant(p, ylon.dtype) for p in TWO_PI_PARTS[ylon.dtype])
    m = tf.round(s / (2 * math.pi))
    return (((s - m * p1) - m * p2) - m * p3) + err
