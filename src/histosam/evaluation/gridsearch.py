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


def stitched_maps(model, image: np.ndarray, precision: str = "auto", device: str | None = None,
                  mpp: float | None = None) -> np.ndarray:
    """Decoder maps ``3×h×w`` float32 of a whole image at the model's working resolution (the image at ``mpp``
    µm/px resampled as :mod:`histosam.tasks.nuclei` does), predicted tile by tile as ``histosam.segment`` does."""
    from histosam.tasks.nuclei import nuclei_maps

    return nuclei_maps(model, image, mpp, precision=precision, device=device)[0]


def grid_search(maps: list[np.ndarray], labels: list[np.ndarray], grid: dict[str, Sequence[Any]] | None = None,
                base: AISParams | None = None) -> tuple[AISParams, list[dict[str, Any]]]:
    """Best AIS parameters by mean per-image mSA over ``(maps, labels)`` pairs; also every combination's score.
    Maps at the model's working resolution are scored on the labels' grid (resampled back as the recipe does)."""
    grid = dict(grid or DEFAULT_GRID)
    base = base or AISParams()
    keys = list(grid)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = base.replace(**dict(zip(keys, values)))
        scores = [mean_segmentation_accuracy(gt.astype(np.uint32), _to_grid(watershed_from_maps(m, params=params),
                                                                             gt.shape))
                  for m, gt in zip(maps, labels)]
        rows.append({**dict(zip(keys, values)), "msa": float(np.mean(scores))})
    best = max(rows, key=lambda r: r["msa"])
    return base.replace(**{k: best[k] for k in keys}), rows


def _to_grid(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Labels predicted at the working resolution brought to the ground truth's grid (nearest pixel centre)."""
    if labels.shape == tuple(shape[:2]):
        return labels
    from histosam.tasks.nuclei import resample_labels

    return resample_labels(labels, (int(shape[0]), int(shape[1])))
