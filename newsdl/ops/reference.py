"""References for the great-circle distance: mpmath (exact), numpy (same formula as the op).

Used by the tests, the benchmark and pipelines/gpu_check.py, none of which may need
TensorFlow for this part, so this module imports only numpy (and mpmath on demand).
Everything here is in radians; ``y`` and ``z`` are arrays of shape ``[..., 2]``
holding (lat, lon).
"""

from __future__ import annotations

import numpy as np

MP_DIGITS = 50


def hard_pairs(rng: np.random.Generator, n_random: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Random pairs plus the cases where the textbook formulas break, as float64 [n, 2].

    Identical, 1e-9 rad apart, antipodal, 1e-9 rad short of antipodal, at and around
    the poles, across the dateline, and the exact values a float32 model would emit.
    """
    def rand_points(n):
        lat = np.arcsin(rng.uniform(-1, 1, n))  # uniform on the sphere
        lon = rng.uniform(-np.pi, np.pi, n)
        return np.stack([lat, lon], axis=-1)

    def antipode(p):
        return np.stack([-p[:, 0], np.where(p[:, 1] > 0, p[:, 1] - np.pi, p[:, 1] + np.pi)], axis=-1)

    ys, zs = [], []
    a = rand_points(n_random)
    ys.append(a), zs.append(rand_points(n_random))                      # random
    b = rand_points(200)
    ys.append(b), zs.append(b.copy())                                   # identical
    for eps in (1e-9, 1e-7, 1e-5):                                      # near-identical
        c = rand_points(100)
        ys.append(c), zs.append(c + rng.normal(0, eps, c.shape))
    d = rand_points(200)
    ys.append(d), zs.append(antipode(d))                                # antipodal
    for eps in (1e-9, 1e-7, 1e-5):                                      # near-antipodal
        e = rand_points(100)
        ys.append(e), zs.append(antipode(e) + rng.normal(0, eps, e.shape))
    half_pi = np.pi / 2
    poles = np.array([
        [half_pi, 0.0], [-half_pi, 0.0], [half_pi, 1.0], [-half_pi, -2.5],
        [half_pi - 1e-9, 0.3], [-half_pi + 1e-9, 3.0], [half_pi, np.pi], [0.0, 0.0]])
    others = np.array([
        [half_pi, 2.0], [-half_pi, 0.0], [-half_pi, 1.0], [half_pi, -2.5],
        [half_pi, 0.3 + np.pi], [-half_pi, 0.0], [half_pi - 1e-9, -np.pi], [half_pi, 0.0]])
    ys.append(poles), zs.append(others)                                 # poles
    f = rand_points(200)
    f[:, 1] = np.pi - np.abs(rng.normal(0, 1e-3, 200))
    g = f.copy()
    g[:, 1] = -np.pi + np.abs(rng.normal(0, 1e-3, 200))
    g[:, 0] += rng.normal(0, 1e-3, 200)
    ys.append(f), zs.append(g)                                          # across the dateline
    ys.append(np.array([[0.1, np.pi], [0.0, -np.pi], [0.7, 3 * np.pi]])),
    zs.append(np.array([[0.1, -np.pi], [0.0, np.pi], [0.7, -np.pi]]))   # same point, lon +-pi
    y, z = np.concatenate(ys), np.concatenate(zs)
    return np.clip(y, -4 * np.pi, 4 * np.pi), np.clip(z, -4 * np.pi, 4 * np.pi)


def mp_distance_and_partials(y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact central angle and its partials (d/dy_lat, d/dy_lon, d/dz_lat, d/dz_lon).

    Computed with mpmath at MP_DIGITS digits from the exact binary values of the inputs
    (so a float32 input is judged on the value it holds, not the one it rounds). The
    partials are the formula of the method's description, set to 0 where sin d is 0.
    """
    import mpmath as mp

    y = np.asarray(y, dtype=np.float64).reshape(-1, 2)
    z = np.asarray(z, dtype=np.float64).reshape(-1, 2)
    dist = np.empty(len(y))
    partials = np.empty((len(y), 4))
    with mp.workdps(MP_DIGITS):
        for i, ((y1, y2), (z1, z2)) in enumerate(zip(y.tolist(), z.tolist())):
            y1, y2, z1, z2 = mp.mpf(y1), mp.mpf(y2), mp.mpf(z1), mp.mpf(z2)
            delta = z2 - y2
            sy, cy, sz, cz = mp.sin(y1), mp.cos(y1), mp.sin(z1), mp.cos(z1)
            a = cz * mp.sin(delta)
            b = cy * sz - sy * cz * mp.cos(delta)
            n = mp.sqrt(a * a + b * b)
            dist[i] = float(mp.atan2(n, sy * sz + cy * cz * mp.cos(delta)))
            if n == 0 or n < mp.mpf(10) ** (-MP_DIGITS + 10):
                partials[i] = 0.0
                continue
            c = sy * cz - cy * sz * mp.cos(delta)
            d_zlon = cy * a / n
            partials[i] = [float(-b / n), float(-d_zlon), float(-c / n), float(d_zlon)]
    return dist, partials


def numpy_forward(y: np.ndarray, z: np.ndarray, degrees: bool = False):
    """The op's formula (gcd_math.h) in numpy, in the inputs' dtype: (dist, jac[3, ...]).

    jac holds (d dist/d y_lat, d dist/d z_lat, d dist/d z_lon), as the op emits it.
    """
    dt = y.dtype.type
    k = dt(np.pi / 180) if degrees else dt(1)
    ylat, ylon, zlat, zlon = y[..., 0], y[..., 1], z[..., 0], z[..., 1]
    dlat = (zlat - ylat) * k
    half_dlon = wrapped_dlon(ylon, zlon, degrees) * (dt(0.5) * k)
    s1, c1 = np.sin(ylat * k), np.cos(ylat * k)
    s2, c2 = np.sin(zlat * k), np.cos(zlat * k)
    sh, ch = np.sin(half_dlon), np.cos(half_dlon)
    sp, cp = np.sin(dlat), np.cos(dlat)
    two = dt(2)
    sin_dlon, vers_dlon = two * sh * ch, two * sh * sh
    a = c2 * sin_dlon
    b = sp + s1 * c2 * vers_dlon
    c = c1 * s2 * vers_dlon - sp
    cos_d = cp - c1 * c2 * vers_dlon
    n_y = np.sqrt(a * a + b * b)
    a_z = c1 * sin_dlon
    n_z = np.sqrt(a_z * a_z + c * c)
    dist = np.arctan2(n_y, cos_d)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_y = np.where(n_y == 0, dt(0), k / n_y).astype(y.dtype)
        inv_z = np.where(n_z == 0, dt(0), k / n_z).astype(y.dtype)
    jac = np.stack([-b * inv_y, -c * inv_z, c1 * a * inv_y])
    return dist, jac


def wrapped_dlon(ylon: np.ndarray, zlon: np.ndarray, degrees: bool) -> np.ndarray:
    """zlon - ylon wrapped by whole turns, keeping the subtraction's rounding error (TwoSum)."""
    dt = ylon.dtype.type
    s = zlon - ylon
    bp = s - zlon
    err = (zlon - (s - bp)) + (-ylon - bp)
    turn = dt(360) if degrees else dt(2 * np.pi)
    m = np.rint(s / turn)
    if degrees:
        return (s - m * turn) + err
    p1, p2, p3 = (dt(p) for p in TWO_PI_PARTS.get(np.dtype(dt).name, TWO_PI_PARTS["float64"]))
    return (((s - m * p1) - m * p2) - m * p3) + err


# 2 pi in three parts, m * part exact for small m: gcd_math.h's 4 * (P1, P2, P3).
TWO_PI_PARTS = {
    "float32": (6.28125, 1.93500518798828125e-3, 3.019915981956752864e-7),
    "float64": (6.28318500518798828124, 3.019915766344638541e-7, 2.15612114326324762116e-14),
}


def numpy_backward(grad: np.ndarray, jac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chain rule of the op's backward pass: (grad_y, grad_z), each [..., 2]."""
    g_lon = grad * jac[2]
    return np.stack([grad * jac[0], -g_lon], axis=-1), np.stack([grad * jac[1], g_lon], axis=-1)
