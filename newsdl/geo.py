"""Points on the sphere: the great-circle distance, unit vectors and their mean. One set of
formulas for the gazetteer (newsdl.features), the geoloc task and its metrics (newsdl.tasks)."""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_KM = 6371.0088  # the SPEC's radius (IUGG mean), the same as newsdl.ops

def gcd_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points in degrees, float64.

    The atan2 (Vincenty) form: accurate at every distance, antipodes and coincident points
    included, where the haversine's arcsin and the cosine law's arccos lose digits.
    """
    p1, p2 = np.radians(np.asarray(lat1, float)), np.radians(np.asarray(lat2, float))
    dl = np.radians(np.asarray(lon2, float) - np.asarray(lon1, float))
    s1, c1, s2, c2 = np.sin(p1), np.cos(p1), np.sin(p2), np.cos(p2)
    num = np.hypot(c2 * np.sin(dl), c1 * s2 - s1 * c2 * np.cos(dl))
    den = s1 * s2 + c1 * c2 * np.cos(dl)
    return EARTH_RADIUS_KM * np.arctan2(num, den)


def to_unit(lat, lon) -> np.ndarray:
    """(lat, lon) degrees -> [n, 3] unit vectors: where averaging points is meaningful."""
    la, lo = np.radians(np.asarray(lat, float)), np.radians(np.asarray(lon, float))
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def from_unit(xyz) -> tuple[np.ndarray, np.ndarray]:
    """[n, 3] vectors (any length > 0) -> (lat, lon) degrees, lon in [-180, 180]."""
    xyz = np.asarray(xyz, float)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def spherical_mean(xyz, weights=None, axis=-2) -> np.ndarray:
    """Normalised (weighted) sum of unit vectors; the mean of an antipodal pair is arbitrary."""
    xyz = np.asarray(xyz, float)
    total = xyz.sum(axis=axis) if weights is None else (xyz * np.asarray(weights, float)[..., None]).sum(axis=axis)
    norm = np.linalg.norm(total, axis=-1, keepdims=True)
    return total / np.where(norm > 0, norm, 1.0)
