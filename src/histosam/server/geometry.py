"""Masks and label images to GeoJSON geometries that trace pixel edges exactly.

Frame: image pixels of the viewport sent by the client, ``(x, y)``, pixel ``(row r, col c)`` covering
the square ``[c, c+1] × [r, r+1]``. This is QuPath's convention: the client then applies
``translate(region.minX, minY) · scale(downsample)`` itself, so the server never offsets.

Outlines are traced along pixel edges (vectorised edge extraction, one walk over the boundary), so the
polygon area equals the pixel count and a point ``(c + 0.5, r + 0.5)`` lies inside the geometry exactly
when pixel ``(r, c)`` belongs to the object. Holes are kept; an object in several pieces (pixels
touching only at a corner count as separate pieces) becomes a MultiPolygon. Geometries are valid
(``shapely.is_valid``); the rare self-touching ring is repaired with ``make_valid``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.polygon import orient

_DIRS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)  # +x, +y, -x, -y (dx, dy)


def _boundary_edges(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Directed unit edges between pixels of different labels, interior on the left (math orientation).

    Returns ``(x, y, direction, label)`` of every edge's start vertex, int64 arrays; direction indexes ``_DIRS``.
    """
    h, w = labels.shape
    p = np.zeros((h + 2, w + 2), dtype=labels.dtype)
    p[1:-1, 1:-1] = labels
    inner = p[1:-1, 1:-1]
    xs, ys, ds, ls = [], [], [], []
    # (neighbour view, start offset (dx, dy) from the pixel's top-left corner, direction)
    sides = ((p[:-2, 1:-1], (0, 0), 0), (p[1:-1, 2:], (1, 0), 1), (p[2:, 1:-1], (1, 1), 2), (p[1:-1, :-2], (0, 1), 3))
    for neighbour, (ox, oy), d in sides:
        r, c = np.nonzero((inner != 0) & (inner != neighbour))
        xs.append(c + ox)
        ys.append(r + oy)
        ds.append(np.full(r.size, d, dtype=np.int64))
        ls.append(inner[r, c].astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ds), np.concatenate(ls)


def _trace_rings(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Closed rings along pixel edges: ``[(label, (K, 2) float64 vertices), ...]``, collinear vertices removed.

    Each label's region is on the left of its rings: outer rings have positive signed area, holes negative.
    At a vertex where two pixels of one label touch only diagonally the ring turns towards its own pixel,
    so diagonal neighbours are separate pieces (4-connectivity).
    """
    x, y, d, lab = _boundary_edges(labels)
    if x.size == 0:
        return []
    w1 = labels.shape[1] + 1
    nl = int(lab.max()) + 1
    start_key = (y * w1 + x) * nl + lab
    keys, slot = np.unique(start_key, return_inverse=True)
    table = np.full((keys.size, 4), -1, dtype=np.int64)
    table[slot, d] = np.arange(x.size)
    ex, ey = x + _DIRS[d, 0], y + _DIRS[d, 1]
    end_slot = np.searchsorted(keys, (ey * w1 + ex) * nl + lab)
    succ = np.full(x.size, -1, dtype=np.int64)
    for turn in (3, 0, 1):  # lowest priority first; left turn ((d + 1) % 4) wins
        cand = table[end_slot, (d + turn) % 4]
        succ = np.where(cand >= 0, cand, succ)
    assert (succ >= 0).all(), "open boundary: internal error"
    pred = np.empty_like(succ)
    pred[succ] = np.arange(succ.size)
    corner = d != d[pred]  # keep a vertex only where the direction changes
    succ_l, corner_l = succ.tolist(), corner.tolist()
    visited = np.zeros(x.size, dtype=bool)
    rings: list[tuple[int, np.ndarray]] = []
    for e0 in np.flatnonzero(corner).tolist():
        if visited[e0]:
            continue
        ring = []
        e = e0
        while True:
            visited[e] = True
            if corner_l[e]:
                ring.append(e)
            e = succ_l[e]
            if e == e0:
                break
        idx = np.asarray(ring)
        verts = np.stack([x[idx], y[idx]], axis=1)
        rings.extend((int(lab[e0]), loop.astype(np.float64)) for loop in _split_pinches(verts, w1))
    return rings


def _split_pinches(verts: np.ndarray, w1: int) -> list[np.ndarray]:
    """Split a ring that visits a vertex twice (pixels of one object touching at a corner) into simple loops.

    A self-touching ring is invalid for GEOS; its loops are each simple, and read as shells (positive area)
    or holes (negative) they describe the same region validly.
    """
    out = []
    stack = [verts]
    while stack:
        v = stack.pop()
        keys = v[:, 1] * w1 + v[:, 0]
        uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
        if (counts == 1).all():
            out.append(v)
            continue
        i = int(first[np.argmax(counts > 1)])
        j = i + 1 + int(np.flatnonzero(keys[i + 1:] == keys[i])[0])
        stack.append(v[i:j])
        stack.append(np.concatenate([v[:i], v[j:]]))
    return out


def _signed_area(v: np.ndarray) -> float:
    xs, ys = v[:, 0], v[:, 1]
    return 0.5 * float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def _assemble(shells: list[np.ndarray], holes: list[np.ndarray]) -> Polygon | MultiPolygon:
    """Polygons from outer rings and holes of one label (each hole goes to the smallest shell covering it)."""
    owned: list[list[np.ndarray]] = [[] for _ in shells]
    if len(shells) == 1:
        owned[0] = list(holes)
    elif holes:
        shell_polys = np.array([Polygon(s) for s in shells], dtype=object)
        hole_polys = np.array([Polygon(h) for h in holes], dtype=object)
        areas = shapely.area(shell_polys)
        hole_idx, shell_idx = shapely.STRtree(shell_polys).query(hole_polys, predicate="covered_by")
        best: dict[int, int] = {}
        for hi, si in zip(hole_idx.tolist(), shell_idx.tolist()):
            if hi not in best or areas[si] < areas[best[hi]]:
                best[hi] = si
        for hi, hole in enumerate(holes):
            owned[best[hi]].append(hole)
    polys = [orient(Polygon(s, h), 1.0) for s, h in zip(shells, owned)]
    polys = [p if p.is_valid else _clean(shapely.make_valid(p)) for p in polys]
    flat = [q for p in polys if p is not None for q in getattr(p, "geoms", [p])]
    return flat[0] if len(flat) == 1 else MultiPolygon(flat)


def _clean(geom: shapely.Geometry) -> Polygon | MultiPolygon | None:
    """Polygonal part of ``geom`` (after ``make_valid``), rings oriented."""
    polys = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and not g.is_empty]
    if not polys:
        return None
    polys = [orient(p, 1.0) for p in polys]
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def labels_to_geometries(labels: np.ndarray) -> dict[int, Polygon | MultiPolygon]:
    """Geometry of every non-zero id of an ``H×W`` integer label image, keyed by id (ascending)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be H×W, got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    shells: dict[int, list[np.ndarray]] = {}
    holes: dict[int, list[np.ndarray]] = {}
    for lab, ring in _trace_rings(labels):
        (shells if _signed_area(ring) > 0 else holes).setdefault(lab, []).append(ring)
    return {lab: _assemble(shells[lab], holes.get(lab, [])) for lab in sorted(shells)}


def mask_to_geometry(mask: np.ndarray) -> Polygon | MultiPolygon | None:
    """Geometry of the true pixels of an ``H×W`` bool mask; ``None`` when the mask is empty."""
    return labels_to_geometries(np.asarray(mask, dtype=bool)).get(1)


def geometry_to_mask(geom: shapely.Geometry, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise ``geom`` by pixel centres into an ``H×W`` bool mask (the inverse of the above)."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w]
    return shapely.contains_xy(geom, cc.ravel() + 0.5, rr.ravel() + 0.5).reshape(h, w)


def feature(geom: Polygon | MultiPolygon, properties: dict[str, Any]) -> dict[str, Any]:
    """A GeoJSON Feature dict with float ``[x, y]`` coordinates and the given properties."""
    g = mapping(geom)
    return {"type": "Feature", "geometry": _lists(g), "properties": properties}


def _lists(obj: Any) -> Any:
    """Tuples to lists (JSON arrays) recursively; coordinates as floats."""
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, (int, float)) for v in obj):
            return [float(v) for v in obj]
        return [_lists(v) for v in obj]
    return obj
