"""Tissue regions as QuPath annotations and a region table; regions cut by chunk borders merged into one.

Coordinates: the region instances are measured where they were segmented (a label image at ``scale`` output
pixels per label pixel); polygons and centroids are in the **output frame** (the input image's pixels, or a slide's
level-0 pixels), areas in µm² from the output frame's ``mpp``. The outline convention is histosam's (pixel
(r, c) = [c, c+1) × [r, r+1); :mod:`histosam.measure.polygons`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from histosam.io.geojson import feature
from histosam.measure.polygons import label_polygons

__all__ = ["Region", "regions_from_labels", "merge_cut_regions", "region_features", "region_table", "class_areas",
           "REGION_COLUMNS"]

REGION_COLUMNS = ("id", "class", "area_um2", "perimeter_um", "centroid_x", "centroid_y")


@dataclass
class Region:
    """One region: its outline in the output frame, its class index, and the chunk it came from."""

    geometry: BaseGeometry
    class_index: int
    chunk: int = 0


def regions_from_labels(instances: np.ndarray, instance_classes: dict[int, int], *,
                        offset: tuple[int, int] = (0, 0), scale: float | tuple[float, float] = 1.0,
                        chunk: int = 0, open_sides: tuple[bool, bool, bool, bool] = (False, False, False, False)
                        ) -> list[Region]:
    """Regions of a label image (or chunk crop whose ``[0, 0]`` is label pixel ``offset``), in id order.

    ``open_sides`` (top, left, bottom, right): chunk borders with more of the image beyond them. There a region's
    outline is cut straight along the border instead of being rounded off as at an object's true edge (the
    labels are extended by one pixel of their own edge before tracing, and the outline is clipped to the chunk),
    so that the pieces of a region cut by a chunk border join without notches (:func:`merge_cut_regions`)."""
    from histosam.measure.polygons import scale_pair

    top, left, bottom, right = (1 if v else 0 for v in open_sides)
    if top or left or bottom or right:
        padded = np.pad(instances, ((top, bottom), (left, right)), mode="edge")
        polys = label_polygons(padded, offset=(offset[0] - top, offset[1] - left), scale=scale)
        sy, sx = scale_pair(scale)
        h, w = instances.shape
        box = shapely.box(offset[1] * sx, offset[0] * sy, (offset[1] + w) * sx, (offset[0] + h) * sy)
        polys = {i: _areal(g.intersection(box)) for i, g in polys.items()}
        polys = {i: g for i, g in polys.items() if not g.is_empty}
    else:
        polys = label_polygons(instances, offset=offset, scale=scale)
    return [Region(g, int(instance_classes.get(i, 1)), chunk) for i, g in polys.items()]


def _areal(geom: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a clipping result (a clip can leave lines or points where outlines touch the box)."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def merge_cut_regions(regions: Sequence[Region]) -> list[Region]:
    """Regions of the same class from **different** chunks that touch (a region cut by a chunk border) become one
    (their union); regions of one chunk are never merged (they were split on purpose). Order: by first member."""
    n = len(regions)
    if n < 2:
        return list(regions)
    geoms = np.array([r.geometry for r in regions], dtype=object)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left.tolist(), right.tolist()):
        if a < b and regions[a].chunk != regions[b].chunk and regions[a].class_index == regions[b].class_index:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out = []
    for root in sorted(groups):
        members = groups[root]
        if len(members) == 1:
            out.append(regions[root])
            continue
        merged = shapely.union_all(geoms[members])
        if not merged.is_valid:
            merged = shapely.make_valid(merged)
        out.append(Region(merged, regions[root].class_index, regions[root].chunk))
    return out


def region_table(regions: Sequence[Region], class_names: Sequence[str], mpp: float | None) -> pd.DataFrame:
    """One row per region (:data:`REGION_COLUMNS`; µm columns NaN without ``mpp``); ids 1..n in order."""
    geoms = np.array([r.geometry for r in regions], dtype=object)
    m = float(mpp) if mpp else float("nan")
    cent = shapely.centroid(geoms) if len(geoms) else np.zeros(0, dtype=object)
    return pd.DataFrame({
        "id": np.arange(1, len(regions) + 1),
        "class": [class_names[r.class_index] for r in regions],
        "area_um2": shapely.area(geoms) * m * m if len(geoms) else np.zeros(0),
        "perimeter_um": shapely.length(geoms) * m if len(geoms) else np.zeros(0),
        "centroid_x": shapely.get_x(cent) if len(geoms) else np.zeros(0),
        "centroid_y": shapely.get_y(cent) if len(geoms) else np.zeros(0),
    }, columns=list(REGION_COLUMNS))


def region_features(regions: Sequence[Region], class_names: Sequence[str], colors: Sequence[Sequence[int]],
                    mpp: float | None, id_namespace: str = "") -> tuple[list[dict], pd.DataFrame]:
    """QuPath ``annotation`` Features (classification ``{name, color}``, measurements ``Area µm^2`` and
    ``Perimeter µm``) and the region table, in the same order."""
    table = region_table(regions, class_names, mpp)
    feats = []
    for r, row in zip(regions, table.to_dict("records")):
        k = r.class_index
        color = tuple(colors[k]) if k < len(colors) else (128, 128, 128)
        meas = {"Area µm^2": row["area_um2"], "Perimeter µm": row["perimeter_um"]}
        feats.append(feature(r.geometry, int(row["id"]), meas, (class_names[k], color),  # type: ignore[arg-type]
                             object_type="annotation", id_namespace=id_namespace))
    return feats, table


def class_areas(table: pd.DataFrame, class_names: Sequence[str]) -> dict[str, float]:
    """Total region area per class in µm² (every non-background class, 0 when absent)."""
    sums = table.groupby("class")["area_um2"].sum().to_dict() if len(table) else {}
    return {name: float(sums.get(name, 0.0)) for name in class_names[1:]}
