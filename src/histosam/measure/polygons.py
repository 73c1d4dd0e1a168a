"""Instance outlines as shapely polygons in (x, y) image pixel coordinates.

Frame: pixel (row r, col c) covers the square ``[c, c+1) × [r, r+1)`` (QuPath's convention; its centre is
``(c + 0.5, r + 0.5)``). Outlines are traced with marching squares (``skimage.measure.find_contours`` at
level 0.5 on the object's binary mask, ``fully_connected="high"`` so diagonal neighbours stay joined), so
they run through the edge midpoints between inside and outside pixel centres: straight edges lie on pixel
borders and staircase corners are cut (a 3×4 block gives area 12 - 4/8 = 11.5; a lone pixel a 0.5 diamond).
Holes become interior rings; objects in several pieces become MultiPolygons; every geometry is valid
(``shapely.make_valid`` when needed).
"""

from __future__ import annotations

from functools import reduce

import numpy as np
import shapely
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from skimage.measure import find_contours

__all__ = ["mask_polygon", "label_polygons"]


def _polygonal(geom: BaseGeometry) -> Polygon | MultiPolygon:
    """Keep only the polygonal parts of ``geom`` (make_valid may add lines/points)."""
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon)]
    polys = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
    return MultiPolygon(polys) if len(polys) != 1 else polys[0]


def mask_polygon(
    mask: np.ndarray, offset: tuple[float, float] = (0, 0), simplify: float = 0.0
) -> Polygon | MultiPolygon:
    """Outline of a bool (row, col) mask; ``offset`` = (row, col) of ``mask[0, 0]`` in the image.

    ``simplify`` is a Douglas-Peucker tolerance in pixels (topology preserving); 0 keeps every vertex
    except collinear ones. Returns an empty Polygon for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return Polygon()
    padded = np.pad(mask, 1).astype(np.uint8)
    rings = []
    for contour in find_contours(padded, 0.5, fully_connected="high"):
        if len(contour) < 4:
            continue
        # contour is (row, col) in padded index coords (pixel centres at integers): shift to image (x, y)
        xy = np.column_stack([contour[:, 1] - 1 + 0.5 + offset[1], contour[:, 0] - 1 + 0.5 + offset[0]])
        ring = Polygon(xy)
        if not ring.is_valid:
            ring = _polygonal(shapely.make_valid(ring))
        rings.append(ring)
    if not rings:
        return Polygon()
    # region = points inside an odd number of rings (handles holes and islands in holes)
    geom = rings[0] if len(rings) == 1 else reduce(lambda a, b: a.symmetric_difference(b), rings)
    geom = _polygonal(geom)
    geom = geom.simplify(simplify, preserve_topology=True) if simplify > 0 else shapely.simplify(geom, 0.0)
    if not geom.is_valid:
        geom = _polygonal(shapely.make_valid(geom))
    return geom


def label_polygons(
    labels: np.ndarray, offset: tuple[int, int] = (0, 0), simplify: float = 0.0
) -> dict[int, Polygon | MultiPolygon]:
    """Polygons of every id > 0 of a label image or label crop whose ``[0, 0]`` is image (row, col) ``offset``.

    Returns ``{id: geometry}`` in id order; coordinates are image (x, y) pixels (module docstring).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    out: dict[int, Polygon | MultiPolygon] = {}
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        off = (offset[0] + sl[0].start, offset[1] + sl[1].start)
        out[i] = mask_polygon(labels[sl] == i, off, simplify)
    return out
