"""Per-instance measurements from a label image (or a label crop with an offset).

Columns of :func:`measure_instances` (one row per id > 0, in id order):

- ``id``: label id (+ ``id_offset``);
- ``centroid_x``, ``centroid_y``: image pixels, pixel (r, c) centred at ``(c + 0.5, r + 0.5)`` (same frame as
  :mod:`histosam.measure.polygons`); ``centroid_x_um``, ``centroid_y_um`` when ``mpp`` is given;
- ``area_px``, ``area_um2`` (if mpp); ``perimeter_px`` (skimage ``perimeter``, 4-connected), ``perimeter_um``;
- ``eccentricity``, ``solidity`` (area / convex hull area), ``circularity`` = 4π·area / perimeter²;
- ``bbox_x0``, ``bbox_y0``, ``bbox_x1``, ``bbox_y1``: half-open pixel box in image pixels;
- ``mean_od_hematoxylin``, ``mean_od_eosin``: mean optical density of the hematoxylin and eosin stains
  (Ruifrok-Johnston colour deconvolution, ``skimage.color.rgb2hed``), when an RGB image is given;
- ``score``: mean of ``scores`` (float H×W, e.g. the foreground probability) over the object, if given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb, rgb2hed

__all__ = ["measure_instances", "COLUMNS"]

COLUMNS = (
    "id",
    "centroid_x",
    "centroid_y",
    "area_px",
    "perimeter_px",
    "eccentricity",
    "solidity",
    "circularity",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
)


def measure_instances(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    *,
    scores: np.ndarray | None = None,
    mpp: float | None = None,
    offset: tuple[int, int] = (0, 0),
    id_offset: int = 0,
) -> pd.DataFrame:
    """Measurements of every object of ``labels`` (int H×W, 0 background) as a DataFrame (module docstring).

    Args:
        image: optional uint8 H×W×3 RGB pixels aligned with ``labels`` (for stain optical densities).
        scores: optional float H×W per-pixel score aligned with ``labels``.
        mpp: microns per pixel; adds µm columns.
        offset: image (row, col) of ``labels[0, 0]`` when ``labels`` is a crop.
        id_offset: added to the ids (e.g. a chunk's global id offset).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    inside = labels.ravel() > 0
    channels = []  # per-pixel values of the object pixels (labels.ravel()[inside]), float64
    if image is not None:
        image = np.asarray(image)
        if image.shape[:2] != labels.shape or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H×W×3 aligned with labels {labels.shape}, got {image.shape}")
        hed = _stain_densities(image.reshape(-1, 3)[inside])
        channels += [hed[:, 0], hed[:, 1]]
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != labels.shape:
            raise ValueError(f"scores must have shape {labels.shape}, got {scores.shape}")
        channels.append(scores.ravel()[inside])
    t = _moment_properties(labels, inside, channels)
    area = t["area"]
    perim = _perimeters(labels, t["label"])
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = np.where(perim > 0, 4 * np.pi * area / perim**2, np.nan)
    r0, c0 = offset
    df = pd.DataFrame(
        {
            "id": t["label"] + int(id_offset),
            "centroid_x": t["centroid_col"] + c0 + 0.5,
            "centroid_y": t["centroid_row"] + r0 + 0.5,
            "area_px": area,
            "perimeter_px": perim,
            "eccentricity": t["eccentricity"],
            "solidity": area / _convex_areas(labels, t["label"]),
            "circularity": circ,
            "bbox_x0": t["bbox_col0"] + c0,
            "bbox_y0": t["bbox_row0"] + r0,
            "bbox_x1": t["bbox_col1"] + c0,
            "bbox_y1": t["bbox_row1"] + r0,
        }
    )
    k = 0
    if image is not None:
        df["mean_od_hematoxylin"] = t["means"][0]
        df["mean_od_eosin"] = t["means"][1]
        k = 2
    if scores is not None:
        df["score"] = t["means"][k]
    if mpp is not None:
        mpp = float(mpp)
        df["centroid_x_um"] = df["centroid_x"] * mpp
        df["centroid_y_um"] = df["centroid_y"] * mpp
        df["area_um2"] = area * mpp**2
        df["perimeter_um"] = perim * mpp
    return df


def _stain_densities(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin, eosin and DAB optical densities ``(M, 3)`` float64 of RGB pixels ``(M, 3)``; for uint8,
    ``skimage.color.rgb2hed`` per pixel (its ``-log(max(v/255, 1e-6)) / -log(1e-6)`` read from a 256-entry
    table, then the same matrix and clipping), computed for the given pixels only."""
    if rgb.dtype != np.uint8:  # other dtypes: skimage itself, on these pixels only
        return rgb2hed(rgb.reshape(1, -1, 3)).reshape(-1, 3)
    table = np.log(np.maximum(np.arange(256, dtype=np.float64) * (1 / 255), 1e-6)) / np.log(1e-6)
    return np.maximum(table[rgb] @ hed_from_rgb, 0)


def _moment_properties(labels: np.ndarray, inside: np.ndarray, channels: list[np.ndarray]) -> dict:
    """Label, area, centroid, bounding box, eccentricity and channel means of every present id, vectorised.

    ``inside`` is ``labels.ravel() > 0``; ``channels`` hold per-pixel values of those pixels.

    The same definitions as ``skimage.measure.regionprops`` (eccentricity from the eigenvalues of the
    inertia tensor of the second central moments, negative eigenvalues clipped to 0), computed for all objects
    at once with ``np.bincount`` instead of per object.
    """
    flat = labels.ravel()
    boxes = ndi.find_objects(labels)
    n = int(flat.max(initial=0))
    count = np.bincount(flat, minlength=n + 1)
    present = np.flatnonzero(count[1:]) + 1
    r0 = np.array([boxes[i - 1][0].start for i in present], dtype=np.int64)
    c0 = np.array([boxes[i - 1][1].start for i in present], dtype=np.int64)
    r1 = np.array([boxes[i - 1][0].stop for i in present], dtype=np.int64)
    c1 = np.array([boxes[i - 1][1].stop for i in present], dtype=np.int64)
    ids = flat[inside]
    rows, cols = np.divmod(np.flatnonzero(inside), labels.shape[1])
    origin_r, origin_c = np.zeros(n + 1), np.zeros(n + 1)
    origin_r[present], origin_c[present] = r0, c0
    dr, dc = rows - origin_r[ids], cols - origin_c[ids]  # box-relative: small numbers, accurate moments

    def total(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(ids, weights=weights, minlength=n + 1)[present].astype(np.float64)

    area = count[present].astype(np.float64)
    mean_r, mean_c = total(dr) / area, total(dc) / area
    mu_rr = total(dr * dr) / area - mean_r**2
    mu_cc = total(dc * dc) / area - mean_c**2
    mu_rc = total(dr * dc) / area - mean_r * mean_c
    half_trace, root = (mu_rr + mu_cc) / 2, np.sqrt(((mu_rr - mu_cc) / 2) ** 2 + mu_rc**2)
    l1, l2 = np.clip(half_trace + root, 0, None), np.clip(half_trace - root, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0, None)), 0.0)
    means = [total(ch) / area for ch in channels]
    return {"label": present.astype(np.int64), "area": count[present].astype(np.int64),
            "centroid_row": mean_r + r0, "centroid_col": mean_c + c0, "eccentricity": ecc,
            "bbox_row0": r0, "bbox_col0": c0, "bbox_row1": r1, "bbox_col1": c1, "means": means}


# skimage.measure.perimeter's weights of a border pixel, indexed by 1 + 2·(4-neighbours on the border)
# + 10·(diagonal neighbours on the border)
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2


def _perimeters(labels: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``skimage.measure.perimeter(labels == i, neighborhood=4)`` of every id in ``present``, all at once.

    A border pixel of object i has a 4-neighbour outside i; its weight depends on which of its eight
    neighbours are border pixels of the same object (skimage's convolution with [[10, 2, 10], [2, 1, 2],
    [10, 2, 10]] on the object's border image, read per object).
    """
    padded = np.pad(labels, 1)
    h, w = labels.shape

    def shifted(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
        return a[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    centre = shifted(padded, 0, 0)
    four = ((-1, 0), (1, 0), (0, -1), (0, 1))
    border = (centre > 0) & np.logical_or.reduce([shifted(padded, dr, dc) != centre for dr, dc in four])
    border_padded = np.pad(border, 1)
    code = np.ones(labels.shape, np.uint8)  # at most 1 + 2·4 + 10·4 = 49
    for weight, offsets in ((2, four), (10, ((-1, -1), (-1, 1), (1, -1), (1, 1)))):
        for dr, dc in offsets:
            same = shifted(border_padded, dr, dc) & (shifted(padded, dr, dc) == centre)
            code += same.view(np.uint8) * np.uint8(weight)
    ids = centre[border]
    sums = np.bincount(ids, weights=_PERIMETER_WEIGHTS[code[border]])  # every present id has border pixels
    return sums[present].astype(np.float64)


def _convex_areas(labels: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Pixel count of the convex hull image of each id in ``present`` (sorted ids found in ``labels``): the
    ``area_convex`` of ``regionprops`` (skimage's ``convex_hull_image``), for all objects at once.

    skimage's hull is that of the pixels' edge midpoints ``(r ± ½, c)`` and ``(r, c ± ½)``; the pixels counted are
    those whose centre lies inside the hull or on its boundary. Here the hulls come from GEOS
    (:func:`_hull_edges`) and the centres are counted row by row with integer arithmetic
    (:func:`_centres_in_hulls`); a test checks equality with ``convex_hull_image`` on random shapes.
    """
    if len(present) == 0:
        return np.zeros(0)
    return _centres_in_hulls(*_hull_edges(labels, present), len(present)).astype(np.float64)


def _hull_edges(labels: np.ndarray,
                present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Non-horizontal edges ``(x0, y0, x1, y1, owner)`` of each object's hull in doubled pixel coordinates
    (x = 2·col, y = 2·row: every candidate vertex is an integer point, so the arithmetic is exact), ``y0 < y1``,
    ``owner`` = position in ``present``.

    Only the first and last pixel of a horizontal run can contribute hull vertices, so the hull of their six
    edge midpoints is skimage's hull. Horizontal hull edges lie at half-integer rows, between pixel centres.
    """
    start = labels != 0
    start[:, 1:] &= labels[:, 1:] != labels[:, :-1]
    end = labels != 0
    end[:, :-1] &= labels[:, :-1] != labels[:, 1:]
    run_rows, run_first = np.nonzero(start)  # raster order: the k-th start and the k-th end are one run
    run_last = np.nonzero(end)[1]
    run_ids = labels[run_rows, run_first]
    slot = np.minimum(np.searchsorted(present, run_ids), len(present) - 1)  # each run's object in ``present``
    order = np.flatnonzero(present[slot] == run_ids)  # ids not asked for are left out
    order = order[np.argsort(slot[order], kind="stable")]
    slot, y, a, b = slot[order], 2 * run_rows[order], 2 * run_first[order], 2 * run_last[order]
    xs = np.stack([a - 1, b + 1, a, a, b, b], axis=1).ravel()  # left and right ends, above/below each end
    ys = np.stack([y, y, y - 1, y + 1, y - 1, y + 1], axis=1).ravel()
    # a line string through an object's candidates has their hull (and is built without per-point geometries)
    paths = shapely.linestrings(np.column_stack([xs, ys]).astype(np.float64), indices=np.repeat(slot, 6))
    coords, owner = shapely.get_coordinates(shapely.convex_hull(paths), return_index=True)
    coords = coords.astype(np.int64)
    same = owner[1:] == owner[:-1]  # consecutive vertices of one closed ring
    p, q, owner = coords[:-1][same], coords[1:][same], owner[:-1][same]
    flip = q[:, 1] < p[:, 1]
    p[flip], q[flip] = q[flip], p[flip].copy()
    keep = q[:, 1] > p[:, 1]
    return p[keep, 0], p[keep, 1], q[keep, 0], q[keep, 1], owner[keep]


def _centres_in_hulls(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, owner: np.ndarray,
                      n: int) -> np.ndarray:
    """Number of pixel centres inside or on each of ``n`` convex polygons given by their non-horizontal edges
    (doubled coordinates, ``y0 < y1``). Row ``r`` crosses a polygon in ``[x_left, x_right]``, the smallest and
    largest crossing of its edges, and holds columns ``ceil(x_left) … floor(x_right)``."""
    first_row = -((-y0) // 2)  # rows r with y0 <= 2r <= y1
    n_rows = np.maximum(y1 // 2 - first_row + 1, 0)
    edge = np.repeat(np.arange(len(x0)), n_rows)
    row = first_row[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    dy, dx = y1[edge] - y0[edge], x1[edge] - x0[edge]
    num = x0[edge] * dy + (2 * row - y0[edge]) * dx  # the crossing's doubled x is num / dy (dy > 0)
    lo, hi = -((-num) // (2 * dy)), num // (2 * dy)  # ceil and floor of the crossing's x
    obj = owner[edge]
    top = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(top, obj, row)
    height = np.zeros(n, np.int64)
    np.maximum.at(height, obj, row - top[obj] + 1)
    base = np.concatenate([[0], np.cumsum(height)])  # one slot per (object, row)
    key = base[obj] + row - top[obj]
    left = np.full(base[-1], np.iinfo(np.int64).max)
    right = np.full(base[-1], np.iinfo(np.int64).min)
    np.minimum.at(left, key, lo)
    np.maximum.at(right, key, hi)
    return np.add.reduceat(np.maximum(right - left + 1, 0), base[:-1])
