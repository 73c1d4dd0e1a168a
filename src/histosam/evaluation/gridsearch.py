"""Tune AIS post-processing parameters on validation images (PathoSAM's protocol, §3.4 of the internals note).

The decoder maps of each image are predicted once (stitched tiles, as the engine does); every parameter
combination then only re-runs the watershed. The best combination by mean per-image mSA is returned, ready to
be stored with the model (``model.config.postprocess``), so that parameters travel with the checkpoint.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from histosam.evaluation.metrics import mean_segmentation_accuracy
from histosam.postprocess.ais import AISParams, watershed_from_maps

#: a compact grid (PathoSAM searched 5·5·6·3 values of centre/boundary thresholds, smoothing and min size)
DEFAULT_GRID: dict[str, Sequence[Any]] = {
    "center_distance_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "boundary_distance_threshold": (0.4, 0.5, 0.6, 0.7),
    "distance_smoothing": (0.6, 1.0, 1.6),
    "min_size": (0, 25),
}


def stitched_maps(model, image: np.ndarray, precision: str = "auto", device: str | None = None) -> np.ndarray:
    """Decoder maps ``3×H×W`` float32 of a whole image, predicted tile by tile as ``histosam.segment`` does."""
    from histosam.automatic import default_tiling
    from histosam.inference.maps import make_map_predictor
    from histosam.tiling.grid import Box, TileGrid
    from histosam.tiling.maps import MapAssembler

    h, w = image.shape[:2]
    tile, halo = default_tiling(model, (h, w))
    predict = make_map_predictor(model, device, precision)
    asm = MapAssembler(TileGrid((h, w), tile, halo), lambda r, c, hh, ww: image[r:r + hh, c:c + ww], predict)
    return asm.maps_for(Box(0, 0, h, w))


def grid_search(maps: list[np.ndarray], labels: list[np.ndarray], grid: dict[str, Sequence[Any]] | None = None,
                base: AISParams | None = None) -> tuple[AISParams, list[dict[str, Any]]]:
    """Best AIS parameters by mean per-image mSA over ``(maps, labels)`` pairs; also every combination's score."""
    grid = dict(grid or DEFAULT_GRID)
    base = base or AISParams()
    keys = list(grid)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = base.replace(**dict(zip(keys, values)))
        scores = [mean_segmentation_accuracy(gt.astype(np.uint32), watershed_from_maps(m, params=params))
                  for m, gt in zip(maps, labels)]
        rows.append({**dict(zip(keys, values)), "msa": float(np.mean(scores))})
    best = max(rows, key=lambda r: r["msa"])
    return base.replace(**{k: best[k] for k in keys}), rows
