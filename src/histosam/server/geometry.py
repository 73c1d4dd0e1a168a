"""Masks and label images to GeoJSON geometries for QuPath: histosam's one outline convention.

The outlines are those of every other histosam output (:mod:`histosam.measure.polygons`): marching squares at
level 0.5 on the object's mask, diagonal neighbours joined, holes kept, pieces as a MultiPolygon, no
simplification, valid (``shapely.is_valid``) with exteriors counter-clockwise. Frame: image pixels of the viewport
sent by the client, ``(x, y)``, pixel ``(row r, col c)`` covering the square ``[c, c+1) × [r, r+1)``. This is
QuPath's convention: the client then applies ``translate(region.minX, minY) · scale(downsample)`` itself, so the
server never offsets.

A point ``(c + 0.5, r + 0.5)`` lies inside the geometry exactly when pixel ``(r, c)`` belongs to the object
(:func:`geometry_to_mask` gives the mask back); the outline cuts staircase corners, so its area is a little less
than the pixel count (a lone pixel is a diamond of area 0.5).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping

from histosam.measure.polygons import label_polygons


def labels_to_geometries(labels: np.ndarray) -> dict[int, Polygon | MultiPolygon]:
    """Geometry of every non-zero id of an ``H×W`` integer label image, keyed by id (ascending)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be H×W, got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    return label_polygons(labels)


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
