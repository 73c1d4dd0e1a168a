"""Per-instance measurements from a label image (or a label crop with an offset): histosam's one measurement set.

:func:`measure_objects` is what images, slides and the server's outlines share (the convention is stated in
:mod:`histosam.measure`); :func:`measure_instances` is its table alone. Objects are measured on the mask they
were segmented on (the *measurement frame*: the model's working resolution); ``scale`` (output pixels per
measurement pixel, a number or a (row, col) pair) maps positions and lengths to the *output frame* (the image's
own pixels; a slide's level-0 pixels) and ``mpp`` is µm per output pixel.

Columns (one row per id > 0, in id order; all float64 except ``id``):

- ``id``: label id (+ ``id_offset``; ids renumbered 1..m first when ``keep`` is given);
- ``centroid_x``, ``centroid_y``: mean of the object's pixel centres, output pixels (pixel (r, c) centred at
  ``(c + 0.5, r + 0.5)`` before scaling, the frame of :mod:`histosam.measure.polygons`);
- ``area_px``: pixel count × ``sx·sy`` (output pixels²; the pixel count itself when ``scale`` = 1);
- ``perimeter_px``: length of the outer ring(s) of the object's outline (:func:`~.polygons.label_polygons`:
  marching squares at 0.5, no simplification), output pixels; holes are not counted;
- ``eccentricity``: of the ellipse with the same second moments (``regionprops``), moments taken to the output
  frame; ``solidity``: pixel count / pixel count of the convex hull image (``regionprops``), measurement frame;
  ``circularity`` = 4π·A / perimeter², A the outline polygon's area (≤ 1; a digital disc comes close to 1);
- ``bbox_x0``, ``bbox_y0``, ``bbox_x1``, ``bbox_y1``: the half-open pixel box, output pixels (= the outline's
  bounds);
- ``mean_od_hematoxylin``, ``mean_od_eosin``: mean optical density of the hematoxylin and eosin stains
  (Ruifrok-Johnston colour deconvolution, ``skimage.color.rgb2hed``) of the object's pixels, when an RGB image
  aligned with ``labels`` is given;
- ``score``: the object's score (1-D ``scores``, one per id) or the mean of per-pixel ``scores``, if given;
- ``centroid_x_um``, ``centroid_y_um``, ``area_um2``, ``perimeter_um``: the pixel values × ``mpp`` (× ``mpp²``
  for the area), when ``mpp`` is given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb, rgb2hed

from histosam.measure.polygons import label_array, label_polygons, scale_pair

__all__ = ["measure_objects", "measure_instances", "COLUMNS", "table_columns"]

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
IMAGE_COLUMNS = ("mean_od_hematoxylin", "mean_od_eosin")
SCORE_COLUMNS = ("score",)
MPP_COLUMNS = ("centroid_x_um", "centroid_y_um", "area_um2", "perimeter_um")


def table_columns(image: bool = True, scores: bool = True, mpp: bool = True) -> tuple[str, ...]:
    """The columns of a measurement table, in order, made with/without an image, scores and mpp."""
    return COLUMNS + IMAGE_COLUMNS * image + SCORE_COLUMNS * scores + MPP_COLUMNS * mpp


def measure_objects(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    *,
    scores: np.ndarray | None = None,
    mpp: float | None = None,
    offset: tuple[int, int] = (0, 0),
    id_offset: int = 0,
    scale: float | tuple[float, float] = 1.0,
    keep: np.ndarray | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Measurements and outlines of every object of ``labels`` (int H×W, 0 background).

    Args:
        labels: label image or crop in the measurement frame.
        image: optional uint8 H×W×3 RGB pixels aligned with ``labels`` (for stain optical densities).
        scores: optional per-pixel float H×W aligned with ``labels``, or per-object 1-D (``scores[i - 1]`` for id
            ``i`` of ``labels``).
        mpp: microns per output pixel; adds the µm columns.
        offset: measurement-frame (row, col) of ``labels[0, 0]`` when ``labels`` is a crop.
        id_offset: added to the ids (e.g. a chunk's global id offset).
        scale: output pixels per measurement pixel, a number or a (row, col) pair.
        keep: optional ids to measure (others are background); they become ids 1..len(keep), in that order.
    Returns:
        ``(table, outlines)``: the DataFrame (module docstring) and an object array of its rows' outlines
        (shapely Polygon/MultiPolygon, output-frame (x, y), :func:`~histosam.measure.polygons.label_polygons`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    labels = label_array(labels)
    sy, sx = scale_pair(scale)
    object_scores = None
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim == 1:
            object_scores, scores = scores, None
        elif scores.shape != labels.shape:
            raise ValueError(f"scores must have shape {labels.shape} or be one per id, got {scores.shape}")
    if keep is not None:
        keep = np.asarray(keep, dtype=np.int64).ravel()
        lut = np.zeros(max(int(labels.max(initial=0)), int(keep.max(initial=0))) + 1, np.uint32)
        lut[keep] = np.arange(1, keep.size + 1)
        labels = lut[labels]
        if object_scores is not None:
            object_scores = object_scores[keep - 1]
    inside = labels.ravel() > 0
    channels = []  # per-pixel values of the object pixels (labels.ravel()[inside]), float64
    if image is not None:
        image = np.asarray(image)
        if image.shape[:2] != labels.shape or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H×W×3 aligned with labels {labels.shape}, got {image.shape}")
        hed = _stain_densities(image.reshape(-1, 3)[inside])
        channels += [hed[:, 0], hed[:, 1]]
    if scores is not None:
        channels.append(scores.ravel()[inside])
    t = _moment_properties(labels, inside, channels, (sy, sx))
    count = t["area"]
    polygons = label_polygons(labels, offset=offset, scale=(sy, sx))
    outlines = np.empty(len(t["label"]), dtype=object)
    outlines[:] = [polygons[int(i)] for i in t["label"]]
    perim = _outer_lengths(outlines)
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = np.where(perim > 0, 4 * np.pi * shapely.area(outlines) / perim**2, np.nan)
    r0, c0 = (int(v) for v in offset)
    # integer positions first, then the fractional part: the same value wherever the crop was cut
    row0, col0 = t["bbox_row0"] + r0, t["bbox_col0"] + c0
    df = pd.DataFrame(
        {
            "id": t["label"] + int(id_offset),
            "centroid_x": (col0 + (t["mean_col"] + 0.5)) * sx,
            "centroid_y": (row0 + (t["mean_row"] + 0.5)) * sy,
            "area_px": count * (sx * sy),
            "perimeter_px": perim,
            "eccentricity": t["eccentricity"],
            "solidity": count / _convex_areas(labels, t["label"]),
            "circularity": circ,
            "bbox_x0": col0 * sx,
            "bbox_y0": row0 * sy,
            "bbox_x1": (t["bbox_col1"] + c0) * sx,
            "bbox_y1": (t["bbox_row1"] + r0) * sy,
        }
    )
    k = 0
    if image is not None:
        df["mean_od_hematoxylin"] = t["means"][0]
        df["mean_od_eosin"] = t["means"][1]
        k = 2
    if object_scores is not None:
        df["score"] = object_scores[t["label"] - 1]
    elif scores is not None:
        df["score"] = t["means"][k]
    if mpp is not None:
        mpp = float(mpp)
        df["centroid_x_um"] = df["centroid_x"] * mpp
        df["centroid_y_um"] = df["centroid_y"] * mpp
        df["area_um2"] = df["area_px"] * mpp**2
        df["perimeter_um"] = perim * mpp
    return df, outlines


def measure_instances(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    *,
    scores: np.ndarray | None = None,
    mpp: float | None = None,
    offset: tuple[int, int] = (0, 0),
    id_offset: int = 0,
    scale: float | tuple[float, float] = 1.0,
    keep: np.ndarray | None = None,
) -> pd.DataFrame:
    """The measurement table of :func:`measure_objects` (same arguments; module docstring)."""
    return measure_objects(labels, image, scores=scores, mpp=mpp, offset=offset, id_offset=id_offset,
                           scale=scale, keep=keep)[0]


def _outer_lengths(outlines: np.ndarray) -> np.ndarray:
    """Summed length of the exterior rings of each Polygon/MultiPolygon (holes left out)."""
    if len(outlines) == 0:
        return np.zeros(0)
    parts, owner = shapely.get_parts(outlines, return_index=True)
    lengths = shapely.length(shapely.get_exterior_ring(parts))
    return np.bincount(owner, weights=lengths, minlength=len(outlines)).astype(np.float64)


def _stain_densities(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin and eosin optical densities ``(M, 2)`` float64 of RGB pixels ``(M, 3)``: ``skimage.color.rgb2hed``
    per pixel (up to rounding). For uint8, its ``-log(max(v/255, 1e-6)) / -log(1e-6)`` times each channel's row of
    the stain matrix is read from a 256-entry table per channel and output, summed and clipped at 0 as skimage does
    (no M×3 float intermediate, no small matrix product); other dtypes go through skimage itself."""
    if rgb.dtype != np.uint8:
        return rgb2hed(rgb.reshape(1, -1, 3)).reshape(-1, 3)[:, :2]
    out = np.empty((len(rgb), 2))
    for k in range(2):
        out[:, k] = _HED_TABLE[rgb[:, 0], 0, k] + _HED_TABLE[rgb[:, 1], 1, k] + _HED_TABLE[rgb[:, 2], 2, k]
    return np.maximum(out, 0, out=out)


# per input value (256), input channel (R, G, B) and stain (H, E): the term of rgb2hed's product
_HED_TABLE = (np.log(np.maximum(np.arange(256, dtype=np.float64) * (1 / 255), 1e-6)) / np.log(1e-6))[:, None, None] \
    * hed_from_rgb[None, :, :2]


def _moment_properties(labels: np.ndarray, inside: np.ndarray, channels: list[np.ndarray],
                       scale: tuple[float, float] = (1.0, 1.0)) -> dict:
    """Label, area, box-relative mean, bounding box, eccentricity and channel means of every present id,
    vectorised.

    ``inside`` is ``labels.ravel() > 0``; ``channels`` hold per-pixel values of those pixels; ``scale`` (row, col)
    stretches the second moments before the eccentricity is taken (output frame).

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
    if scale != (1.0, 1.0):
        mu_rr, mu_cc, mu_rc = mu_rr * scale[0] ** 2, mu_cc * scale[1] ** 2, mu_rc * (scale[0] * scale[1])
    half_trace, root = (mu_rr + mu_cc) / 2, np.sqrt(((mu_rr - mu_cc) / 2) ** 2 + mu_rc**2)
    l1, l2 = np.clip(half_trace + root, 0, None), np.clip(half_trace - root, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0, None)), 0.0)
    means = [total(ch) / area for ch in channels]
    return {"label": present.astype(np.int64), "area": count[present].astype(np.int64),
            "mean_row": mean_r, "mean_col": mean_c, "eccentricity": ecc,
            "bbox_row0": r0, "bbox_col0": c0, "bbox_row1": r1, "bbox_col1": c1, "means": means}


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
