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
from skimage.color import rgb2hed
from skimage.measure import regionprops_table

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
    channels = []
    if image is not None:
        image = np.asarray(image)
        if image.shape[:2] != labels.shape or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H×W×3 aligned with labels {labels.shape}, got {image.shape}")
        hed = rgb2hed(image)
        channels += [hed[..., 0], hed[..., 1]]
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != labels.shape:
            raise ValueError(f"scores must have shape {labels.shape}, got {scores.shape}")
        channels.append(scores)
    props = ["label", "centroid", "area", "perimeter", "eccentricity", "solidity", "bbox"]
    intensity = None
    if channels:
        intensity = np.stack(channels, axis=-1).astype(np.float64)
        props.append("intensity_mean")
    t = regionprops_table(labels, intensity_image=intensity, properties=props)
    area = t["area"].astype(np.int64)
    perim = t["perimeter"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = np.where(perim > 0, 4 * np.pi * area / perim**2, np.nan)
    r0, c0 = offset
    df = pd.DataFrame(
        {
            "id": t["label"].astype(np.int64) + int(id_offset),
            "centroid_x": t["centroid-1"] + c0 + 0.5,
            "centroid_y": t["centroid-0"] + r0 + 0.5,
            "area_px": area,
            "perimeter_px": perim,
            "eccentricity": t["eccentricity"],
            "solidity": t["solidity"],
            "circularity": circ,
            "bbox_x0": t["bbox-1"] + c0,
            "bbox_y0": t["bbox-0"] + r0,
            "bbox_x1": t["bbox-3"] + c0,
            "bbox_y1": t["bbox-2"] + r0,
        }
    )
    k = 0
    if image is not None:
        df["mean_od_hematoxylin"] = t["intensity_mean-0"]
        df["mean_od_eosin"] = t["intensity_mean-1"]
        k = 2
    if scores is not None:
        df["score"] = t[f"intensity_mean-{k}"]
    if mpp is not None:
        mpp = float(mpp)
        df["centroid_x_um"] = df["centroid_x"] * mpp
        df["centroid_y_um"] = df["centroid_y"] * mpp
        df["area_um2"] = area * mpp**2
        df["perimeter_um"] = perim * mpp
    return df
