"""Automatic nucleus segmentation of an in-memory image: ``histosam.segment(image) -> uint32 labels``.

Two modes:

- ``"ais"`` (default): the instance decoder predicts foreground / centre-distance / boundary-distance maps on
  tiles with a halo, and the streaming chunk engine (:mod:`histosam.tiling.engine`) turns them into instances
  with a seeded watershed, chunk by chunk, each nucleus kept by exactly one chunk. Post-processing parameters
  come from the model (``model.config.postprocess``) and can be overridden per call.
- ``"amg"``: SAM's automatic mask generator (grid of point prompts), see :mod:`histosam.postprocess.amg`.

Resolution: with ``mpp`` (µm/px of the input) and a model trained at a known resolution (``model.config.mpp``),
the image is resampled to the model's resolution and the labels back to the input grid.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from histosam.errors import HistosamError
from histosam.io.images import to_rgb_uint8
from histosam.postprocess.ais import AISParams

AIS_KEYS = set(AISParams.__dataclass_fields__)


def resolve_model(model: Any = None, device: str | None = None, require_decoder: bool = False):
    """A loaded model from a model object, registry name, path or ``None`` (the embedded default)."""
    if model is None or isinstance(model, str | os.PathLike):
        from histosam.registry.loader import load_model

        return load_model(model, device=device, require_decoder=require_decoder)
    return model


#: receptive field of histosam-nano's instance maps (encoder + instance decoder): an output pixel depends on input
#: pixels at most 213 px away (measured by back-propagation, tests/test_tiling_model_maps.py)
NANO_RECEPTIVE_RADIUS = 213


def default_tiling(model, shape: tuple[int, int]) -> tuple[int, int]:
    """(tile, halo) for the engine.

    Native-resolution, fully convolutional models (nano): 1024 + 2·224 px tiles. The halo covers the receptive
    field (:data:`NANO_RECEPTIVE_RADIUS`) and every tile is padded only to a multiple of 16, so the stitched maps,
    hence the labels, are identical to an untiled run whatever the tile size (StarDist's tiling invariant;
    measured bit-identical labels on a real 2000² region for tiles 512, 768, 1024 and untiled).
    ``resize_longest_side`` models (SAM, PathoSAM): an image up to 512 px a side is one tile (micro-sam's untiled
    path: the whole image is resized to the frame); larger images use PathoSAM's tiling, 384 + 2·64 px tiles each
    resized to the frame (what PathoSAM used on MoNuSeg, CoNSeP, Lizard, CPM15, PUMA and in its whole-slide CLI);
    these models see each tile rescaled, so no halo makes them tile-invariant."""
    if model.config.resize_longest_side:
        if max(shape) <= 512:
            side = max(shape)
            return side, 0
        return 384, 64
    return 1024, 224


def rescale_factor(mpp: float | None, model) -> float:
    """Factor to resample an image at ``mpp`` µm/px to the model's working resolution (1.0 when unknown)."""
    if mpp is None or model.config.mpp is None:
        return 1.0
    factor = float(mpp) / float(model.config.mpp)
    return 1.0 if abs(factor - 1.0) < 0.05 else factor


def resample_rgb(image: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0], labels.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1], labels.shape[1] - 1).astype(int)
    return labels[rows[:, None], cols[None, :]]


def split_params(model, params: dict[str, Any]) -> tuple[AISParams, dict[str, Any]]:
    """(AIS parameters = model defaults + overrides, remaining engine keyword arguments)."""
    ais = {k: v for k, v in params.items() if k in AIS_KEYS}
    rest = {k: v for k, v in params.items() if k not in AIS_KEYS}
    defaults = {k: v for k, v in (model.config.postprocess or {}).items() if k in AIS_KEYS}
    return AISParams.from_dict({**defaults, **ais}), rest


def check_job(shape: tuple[int, int], factor: float, mpp: float | None, model: Any, *, tile: int | None = None,
              halo: int | None = None, chunk: int | None = None) -> None:
    """Refuse, before any work, options and sizes that cannot end well (:mod:`histosam.limits`): a tile, halo or
    chunk out of range, an upsampling above the limit, or an estimated memory use above what is available
    (``shape``: the original image's ``(H, W)``; ``factor``: the resampling to the model's resolution)."""
    from histosam.limits import check_memory, check_tiling, check_upsample

    check_tiling(tile, halo, chunk)
    check_upsample(factor, mpp, getattr(getattr(model, "config", None), "mpp", None))
    h, w = shape
    work_px = round(h * factor) * round(w * factor)
    # original RGB + labels (uint32) + the resampled RGB; the engine's own buffers are bounded by the chunk
    estimate = h * w * 7 + (work_px * 3 if factor != 1.0 else 0) + 512 * 2**20
    check_memory(estimate, f"a {w}×{h} image ({round(w * factor)}×{round(h * factor)} px at the model's "
                           "resolution)", "give the right --mpp, or use `histosam slide` for very large images")


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
    factor = rescale_factor(mpp, model)
    check_job(rgb.shape[:2], factor, mpp, model, tile=tile, halo=halo, chunk=chunk)
    work = resample_rgb(rgb, factor) if factor != 1.0 else rgb
    if mode == "amg":
        labels = _segment_amg(work, model, device, precision, params)
    else:
        from histosam.inference.maps import make_map_predictor
        from histosam.tiling.engine import segment_array

        ais, rest = split_params(model, params)
        d_tile, d_halo = default_tiling(model, work.shape[:2])
        predict = make_map_predictor(model, device, precision, encoder_batch=batch_size)
        labels = segment_array(work, predict, tile=tile or d_tile, halo=d_halo if halo is None else halo,
                               chunk=chunk, params=ais, batch_size=batch_size, **rest)
    if factor != 1.0:
        labels = resample_labels(labels, rgb.shape[:2])
    return labels.astype(np.uint32, copy=False)


def _segment_amg(rgb: np.ndarray, model, device, precision: str, params: dict[str, Any]) -> np.ndarray:
    from histosam.inference.predictor import Predictor
    from histosam.postprocess.amg import AMGParams, generate_masks, masks_to_labels

    predictor = Predictor(model, device=device, precision=precision)
    records = generate_masks(predictor, rgb, AMGParams.from_dict(params))
    return masks_to_labels(records, rgb.shape[:2])
