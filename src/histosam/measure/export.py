"""Label image (or chunk crop) -> QuPath features + measurement table in one pass."""

from __future__ import annotations

import numpy as np
import pandas as pd

from histosam.io.geojson import DEFAULT_CLASS, feature, geometry_dicts
from histosam.measure.features import measure_objects

__all__ = ["instances_to_features", "resampled_crop"]


def instances_to_features(
    labels: np.ndarray,
    *,
    offset: tuple[int, int] = (0, 0),
    id_offset: int = 0,
    image: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    mpp: float | None = None,
    scale: float | tuple[float, float] = 1.0,
    keep: np.ndarray | None = None,
    classification: tuple[str, tuple[int, int, int]] | None = DEFAULT_CLASS,
    id_namespace: str = "",
) -> tuple[list[dict], pd.DataFrame]:
    """Features (one QuPath ``detection`` per id, measurements attached) and the measurement table.

    ``labels`` is a label image or a chunk crop (``ChunkResult.labels``) whose ``[0, 0]`` is (row, col)
    ``offset`` of the measurement frame; ``image``/``scores``/``mpp``/``scale``/``keep`` as in
    :func:`~histosam.measure.features.measure_objects`. Ids are ``id_offset + id``. The geometry of each feature
    is the object's outline (:mod:`histosam.measure.polygons`) in the output frame, coordinates rounded to 0.01.
    """
    table, outlines = measure_objects(labels, image, scores=scores, mpp=mpp, offset=offset, id_offset=id_offset,
                                      scale=scale, keep=keep)
    feats = []
    for row, geom in zip(table.to_dict("records"), geometry_dicts(outlines)):
        meas = {k: v for k, v in row.items() if k != "id"}
        feats.append(feature(geom, row["id"], meas, classification, id_namespace=id_namespace))
    return feats, table


def resampled_crop(labels: np.ndarray, offset: tuple[int, int], scores: np.ndarray, work: np.ndarray,
                   rows: np.ndarray, cols: np.ndarray) -> dict:
    """Arguments of :func:`instances_to_features` that measure a working-frame chunk crop of a resampled image.

    ``labels`` (local ids 1..n, ``[0, 0]`` at working (row, col) ``offset``), ``scores`` (one per id) and
    ``work`` (the resampled H'×W'×3 image) are in the model's frame; ``rows``/``cols`` map each original pixel to
    its working pixel (``histosam.pipeline.outputs.source_index``). The objects are measured where they were
    segmented and mapped to the original pixels by the scale ``(H/H', W/W')``; only the objects that keep a pixel
    on the original grid are measured (``keep``), in id order, so that the table's ids match the label crop of
    ``histosam.pipeline.outputs.crop_to_original``.
    """
    h, w = labels.shape
    r = rows[(rows >= offset[0]) & (rows < offset[0] + h)] - offset[0]
    c = cols[(cols >= offset[1]) & (cols < offset[1] + w)] - offset[1]
    keep = np.unique(labels[r[:, None], c[None, :]]) if r.size and c.size else np.zeros(0, labels.dtype)
    keep = keep[keep > 0]
    return {"labels": labels, "offset": offset, "image": work[offset[0]:offset[0] + h, offset[1]:offset[1] + w],
            "scores": scores, "scale": (rows.size / work.shape[0], cols.size / work.shape[1]), "keep": keep}
