"""Automatic nucleus segmentation of an in-memory image: ``histosam.segment(image) -> uint32 labels``.

Two modes:

- ``"ais"`` (default): the instance decoder predicts foreground / centre-distance / boundary-distance maps on
  tiles with a halo, and the streaming chunk engine (:mod:`histosam.tiling.engine`) turns them into instances
  with a seeded watershed, chunk by chunk, each nucleus kept by exactly one chunk. Post-processing parameters
  come from the model (``model.config.postprocess``) and can be overridden per call.
- ``"amg"``: SAM's automatic mask generator (grid of point prompts), see :mod:`histosam.postprocess.amg`.

Resolution: with ``mpp`` (µm/px of the input) and a model trained at a known resolution (``model.config.mpp``),
the image is resampled to the model's resolution and the labels back to the input grid. The AIS recipe itself is
:mod:`histosam.tasks.nuclei` (this module is the public entry point and imports only downward).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histosam.errors import HistosamError
from histosam.io.images import to_rgb_uint8
from histosam.models.nano import NANO_RECEPTIVE_RADIUS
from histosam.tasks.nuclei import (
    AIS_KEYS,
    check_job,
    default_tiling,
    resample_labels,
    resample_rgb,
    rescale_factor,
    resolve_model,
    segment_nuclei,
    split_params,
)

__all__ = ["segment", "resolve_model", "default_tiling", "rescale_factor", "resample_rgb", "resample_labels",
           "split_params", "check_job", "AIS_KEYS", "NANO_RECEPTIVE_RADIUS"]


def segment(image: np.ndarray, model: Any = None, mode: str = "ais", *, tile: int | None = None,
            halo: int | None = None, chunk: int = 1024, batch_size: int = 4, device: str | None = None,
            precision: str = "auto", mpp: float | None = None, **params: Any) -> np.ndarray:
    """Segment every nucleus of an image of any size.

    Args:
        image: ``H×W×3`` (or anything :func:`~histosam.io.images.to_rgb_uint8` converts).
        model: model object, registry name, checkpoint path, or ``None`` for the embedded default.
        mode: ``"ais"`` or ``"amg"``.
        tile, halo: engine tile and halo in pixels (defaults from :func:`default_tiling`).
        chunk: post-processing chunk size (memory is bounded by it, not by the image).
        batch_size: tiles per encoder batch.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        mpp: µm/px of ``image``, to resample to the model's working resolution.
        **params: AIS post-processing overrides (``center_distance_threshold``, ``boundary_distance_threshold``,
            ``foreground_threshold``, ``foreground_smoothing``, ``distance_smoothing``, ``min_size``), engine
            options (``context``, ...), or AMG parameters for ``mode="amg"``.
    Returns:
        uint32 ``H×W`` labels, 0 = background, ids 1..N.
    """
    rgb = to_rgb_uint8(image)
    if mode not in ("ais", "amg"):
        raise HistosamError(f"mode must be 'ais' or 'amg', not {mode!r}")
    model = resolve_model(model, device, require_decoder=(mode == "ais"))
    if mode == "ais":
        return segment_nuclei(rgb, model, mpp, tile=tile, halo=halo, chunk=chunk, batch_size=batch_size,
                              device=device, precision=precision, params=params)
    factor = rescale_factor(mpp, model)
    check_job(rgb.shape[:2], factor, mpp, model, tile=tile, halo=halo, chunk=chunk)
    work = resample_rgb(rgb, factor) if factor != 1.0 else rgb
    labels = _segment_amg(work, model, device, precision, params)
    if factor != 1.0:
        labels = resample_labels(labels, rgb.shape[:2])
    return labels.astype(np.uint32, copy=False)


def _segment_amg(rgb: np.ndarray, model, device, precision: str, params: dict[str, Any]) -> np.ndarray:
    from histosam.inference.predictor import Predictor
    from histosam.postprocess.amg import AMGParams, generate_masks, masks_to_labels

    predictor = Predictor(model, device=device, precision=precision)
    records = generate_masks(predictor, rgb, AMGParams.from_dict(params))
    return masks_to_labels(records, rgb.shape[:2])
