"""Instance outlines as shapely polygons in (x, y) pixel coordinates: the outline convention of histosam.

This module is the only place where outlines are traced; images (``histosam segment``), slides
(``histosam slide``) and the QuPath server (``histosam serve``) all use :func:`label_polygons` /
:func:`mask_polygon` (the convention as a whole, with the measurements, is stated in :mod:`histosam.measure`).

Frame: pixel (row r, col c) covers the square ``[c, c+1) × [r, r+1)`` (QuPath's convention; its centre is
``(c + 0.5, r + 0.5)``). Outlines are the marching-squares contours at level 0.5 of each object's binary mask
with diagonal neighbours joined (``skimage.measure.find_contours(..., fully_connected="high")``): they run
through the edge midpoints between inside and outside pixel centres, so straight edges lie on pixel borders and
staircase corners are cut (a 3×4 block gives area 12 - 4/8 = 11.5; a lone pixel a 0.5 diamond). Every vertex is
a multiple of 0.5 (before ``scale``); vertices in the middle of straight stretches are left out, nothing else is
simplified (``simplify=0``, the default and what histosam writes). Holes become interior rings; objects in
several pieces become MultiPolygons; every geometry is valid (``shapely.make_valid`` when needed) and oriented
(exteriors counter-clockwise, holes clockwise: positive / negative signed area, GeoJSON's right-hand rule). A
pixel centre lies inside the outline exactly when the pixel belongs to the object.

``offset`` places a crop in a larger frame and ``scale`` maps it to the output frame: a traced vertex ``(x, y)``
of the crop becomes ``((x + col0) · sx, (y + row0) · sy)`` (slides: working frame → level-0; resampled images:
model frame → the image's own pixels).

All objects are traced at once (:func:`_trace_rings`): every 2×2 cell of pixel centres on an object's border
emits oriented segments from a 16-case table, and the rings are the cycles of "the segment that starts where
this one ends", found for all rings together by pointer jumping. Simplification and validity checks then run
on the array of geometries in one GEOS call each.
"""

from __future__ import annotations

from functools import reduce

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

__all__ = ["mask_polygon", "label_polygons", "scale_pair"]


def _polygonal(geom: BaseGeometry) -> Polygon | MultiPolygon:
    """Keep only the polygonal parts of ``geom`` (make_valid may add lines/points)."""
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon)]
    polys = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
    return MultiPolygon(polys) if len(polys) != 1 else polys[0]


# Cell corners (bit, doubled (x, y)) and edge midpoints (doubled (x, y)) of a 2×2 cell of pixel centres whose
# top-left centre is (0, 0); y grows downwards.
_CORNERS = ((1, (0, 0)), (2, (2, 0)), (4, (2, 2)), (8, (0, 2)))  # top-left, top-right, bottom-right, bottom-left
_MIDPOINTS = np.array([(1, 0), (2, 1), (1, 2), (0, 1)])  # top, right, bottom, left edge
_EDGE_ENDS = ((1, 2), (2, 4), (8, 4), (1, 8))  # the corners each edge joins


def _segment_table() -> tuple[np.ndarray, np.ndarray]:
    """``(count[16], segments[16, 2, 2])``: per case (inside corners as bits), 0-2 segments as (from, to) edge
    indices, oriented with the inside corners on the right (positive cross product in y-down coordinates).
    Saddles join the two inside corners (cut the outside ones), as ``fully_connected="high"``."""
    count = np.zeros(16, np.int64)
    segments = np.zeros((16, 2, 2), np.int64)
    for case in range(1, 15):
        crossing = [e for e, (u, v) in enumerate(_EDGE_ENDS) if bool(case & u) != bool(case & v)]
        if len(crossing) == 2:
            pairs = [tuple(crossing)]
        else:  # saddle: cut each outside corner with the midpoints of its two edges
            outside = [bit for bit, _ in _CORNERS if not case & bit]
            pairs = [tuple(e for e, ends in enumerate(_EDGE_ENDS) if bit in ends) for bit in outside]
        for j, (p, q) in enumerate(pairs):
            inside_xy = next(np.array(xy) for bit, xy in _CORNERS if case & bit)
            d, r = _MIDPOINTS[q] - _MIDPOINTS[p], inside_xy - _MIDPOINTS[p]
            segments[case, j] = (p, q) if d[0] * r[1] - d[1] * r[0] > 0 else (q, p)
        count[case] = len(pairs)
    return count, segments


_SEGMENT_COUNT, _SEGMENTS = _segment_table()


def _trace_rings(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching-squares rings of every object of ``labels`` (int H×W, 0 background).

    Returns ``(xy, ring, owner)``: ring vertices ``(N, 2)`` as doubled coordinates of the padded image's pixel
    centres (int64; vertex ``k`` of a ring is followed by ``k + 1``, rings are not closed, vertices in the
    middle of straight stretches are left out), the ring index
    ``(N,)`` of each vertex (0..R-1, ascending), and the label id ``(R,)`` of each ring.
    """
    padded = np.pad(labels, 1)
    corners = padded[:-1, :-1], padded[:-1, 1:], padded[1:, 1:], padded[1:, :-1]  # tl, tr, br, bl
    tl, tr, br, bl = corners
    rows, cols = np.nonzero((tl != tr) | (tl != br) | (tl != bl))  # cells on some border
    values = [c[rows, cols] for c in corners]
    width = 2 * padded.shape[1] + 1
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    objects: list[np.ndarray] = []
    for k, v in enumerate(values):  # each id of a cell once, from its first corner
        sel = v != 0
        for u in values[:k]:
            sel &= v != u
        obj = v[sel]
        case = sum(bit * (values[i][sel] == obj) for i, (bit, _) in enumerate(_CORNERS))
        r2, c2 = 2 * rows[sel], 2 * cols[sel]
        for j in range(2):
            has = _SEGMENT_COUNT[case] > j
            seg = _SEGMENTS[case[has], j]
            for edge, out in ((seg[:, 0], starts), (seg[:, 1], ends)):
                out.append((r2[has] + _MIDPOINTS[edge, 1]) * width + c2[has] + _MIDPOINTS[edge, 0])
            objects.append(obj[has])
    obj = np.concatenate(objects).astype(np.int64)
    # one key per (object, midpoint): each is the start of exactly one segment and the end of exactly one
    span = np.int64(width) * (2 * padded.shape[0] + 1)
    start_key = obj * span + np.concatenate(starts)
    end_key = obj * span + np.concatenate(ends)
    order = np.argsort(start_key)
    successor = order[np.searchsorted(start_key[order], end_key)]
    # ring id = smallest segment index on the cycle (pointer jumping), then each segment's distance to the
    # ring's last segment (list ranking on the cycle cut after that smallest index's predecessor)
    n = len(obj)
    ring, jump = np.arange(n), successor.copy()
    while True:
        merged = np.minimum(ring, ring[jump])
        if np.array_equal(merged, ring):  # no window of 2^k segments missed its cycle's minimum: done
            break
        ring, jump = merged, jump[jump]
    head = ring == np.arange(n)
    tail = np.zeros(n, bool)
    tail[np.flatnonzero(head[successor])] = True  # the segment leading back to the head ends the list
    nxt = np.where(tail, np.arange(n), successor)
    dist = (~tail).astype(np.int64)
    while True:
        dist_next = dist + dist[nxt]
        if np.array_equal(dist_next, dist):
            break
        dist, nxt = dist_next, nxt[nxt]
    order = np.lexsort((-dist, ring))
    ring_ids, ring_index = np.unique(ring[order], return_inverse=True)
    key = start_key[order] % span
    xy = np.column_stack([key % width, key // width])
    keep = _corners(xy, ring_index.ravel())
    return xy[keep], ring_index.ravel()[keep], obj[ring_ids]


def _corners(xy: np.ndarray, ring_index: np.ndarray) -> np.ndarray:
    """Mask of the ring vertices that are not in the middle of a straight stretch (integer coordinates, rings in
    consecutive blocks): dropping the others leaves each polygon unchanged."""
    n = len(xy)
    first = np.flatnonzero(np.r_[True, ring_index[1:] != ring_index[:-1]])
    last = np.r_[first[1:], n] - 1
    nxt, prev = np.arange(1, n + 1), np.arange(-1, n - 1)
    nxt[last], prev[first] = first, last
    d_in, d_out = xy - xy[prev], xy[nxt] - xy
    straight = (d_in[:, 0] * d_out[:, 1] == d_in[:, 1] * d_out[:, 0]) & ((d_in * d_out).sum(axis=1) > 0)
    return ~straight


def label_array(labels: np.ndarray) -> np.ndarray:
    """``labels`` as an integer array numpy can count with (``np.bincount``), not copied when it already is one
    (a uint32 chunk crop stays uint32: half the memory of int64)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if labels.dtype in (np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32, np.int64):
        return labels
    return labels.astype(np.int64)


def scale_pair(scale: float | tuple[float, float]) -> tuple[float, float]:
    """``(row_scale, col_scale)`` of a number or a (row, col) pair (output pixels per input pixel)."""
    if isinstance(scale, tuple | list | np.ndarray):
        sy, sx = (float(v) for v in scale)
        return sy, sx
    return float(scale), float(scale)


def label_polygons(
    labels: np.ndarray, offset: tuple[float, float] = (0, 0), simplify: float = 0.0,
    scale: float | tuple[float, float] = 1.0,
) -> dict[int, Polygon | MultiPolygon]:
    """Polygons of every id > 0 of a label image or label crop whose ``[0, 0]`` is (row, col) ``offset``.

    ``scale``: output pixels per label pixel, a number or a (row, col) pair; coordinates are
    ``(x + offset[1]) · scale_col``, ``(y + offset[0]) · scale_row`` (module docstring).
    ``simplify`` is a Douglas-Peucker tolerance in output pixels (topology preserving); 0 (histosam's convention)
    keeps every vertex except collinear ones. Returns ``{id: geometry}`` in id order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if not labels.any():
        return {}
    xy2, ring_index, owner = _trace_rings(label_array(labels))
    # doubled padded-centre coordinates -> image (x, y): padded index 1 is image pixel 0, centred at 0.5
    sy, sx = scale_pair(scale)
    xy = xy2 / 2.0 - 0.5 + np.array([offset[1], offset[0]], dtype=np.float64)
    if (sx, sy) != (1.0, 1.0):
        xy *= np.array([sx, sy])
    rings = shapely.linearrings(xy, indices=ring_index)
    order = np.argsort(owner, kind="stable")
    ids, first, n_rings = np.unique(owner[order], return_index=True, return_counts=True)
    geoms = np.empty(len(ids), dtype=object)
    single = n_rings == 1
    geoms[single] = shapely.polygons(rings[order[first[single]]])
    for j in np.flatnonzero(~single):  # holes and islands: points inside an odd number of rings
        parts = shapely.polygons(rings[order[first[j]:first[j] + n_rings[j]]])
        geoms[j] = _oriented(_polygonal(reduce(lambda a, b: a.symmetric_difference(b), parts)))
    if simplify > 0:
        geoms = shapely.simplify(geoms, simplify, preserve_topology=True)
    for j in np.flatnonzero(~shapely.is_valid(geoms)):
        geoms[j] = _oriented(_polygonal(shapely.make_valid(geoms[j])))
    return {int(i): g for i, g in zip(ids, geoms)}


def _oriented(geom: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
    """Exterior rings counter-clockwise and holes clockwise (positive / negative signed area: GeoJSON's
    right-hand rule), as the traced single rings already are."""
    if isinstance(geom, MultiPolygon):
        return MultiPolygon([orient(p, 1.0) for p in geom.geoms])
    return orient(geom, 1.0)


def mask_polygon(
    mask: np.ndarray, offset: tuple[float, float] = (0, 0), simplify: float = 0.0,
    scale: float | tuple[float, float] = 1.0,
) -> Polygon | MultiPolygon:
    """Outline of a bool (row, col) mask; ``offset`` = (row, col) of ``mask[0, 0]`` in the image.

    ``simplify`` and ``scale`` as in :func:`label_polygons`. Returns an empty Polygon for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    return label_polygons(mask.view(np.uint8), offset, simplify, scale).get(1, Polygon())
