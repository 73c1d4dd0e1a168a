"""Label image (or chunk crop) -> QuPath features + measurement table in one pass."""

from __future__ import annotations

import numpy as np
import pandas as pd

from histosam.io.geojson import DEFAULT_CLASS, feature, geometry_dicts
from histosam.measure.features import measure_instances
from histosam.measure.polygons import label_polygons

__all__ = ["instances_to_features"]


def instances_to_features(
    labels: np.ndarray,
    *,
    offset: tuple[int, int] = (0, 0),
    id_offset: int = 0,
    image: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    mpp: float | None = None,
    simplify: float = 0.3,
    classification: tuple[str, tuple[int, int, int]] | None = DEFAULT_CLASS,
    id_namespace: str = "",
) -> tuple[list[dict], pd.DataFrame]:
    """Features (one QuPath ``detection`` per id, measurements attached) and the measurement table.

    ``labels`` is a label image or a chunk crop (``ChunkResult.labels``) whose ``[0, 0]`` is image
    (row, col) ``offset``; ``image``/``scores`` are aligned with ``labels``. Ids are ``id_offset + id``.
    """
    table = measure_instances(labels, image, scores=scores, mpp=mpp, offset=offset, id_offset=id_offset)
    polys = label_polygons(labels, offset=offset, simplify=simplify)
    feats = []
    for row, geom in zip(table.to_dict("records"), geometry_dicts(polys.values())):
        meas = {k: v for k, v in row.items() if k != "id"}
        feats.append(feature(geom, row["id"], meas, classification, id_namespace=id_namespace))
    return feats, table
