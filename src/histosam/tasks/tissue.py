"""The tissue-region recipe: image → the model's working resolution → tiled class-prompt maps → class map, region
instances and regions back at the input resolution.

Tiling (all sizes in working pixels): the image is cut into cores of ``tile`` px; each core is decoded in a window
that adds up to ``halo`` px of context on every side where the image has it; the window is placed at the top-left
of the model frame and zero-padded bottom/right (the model's own padding convention, also used in training), and
only the core of each window's output is kept. Every output pixel therefore comes from exactly one window, and
the result does not depend on how the caller chunks the image (whole slides stream chunk by chunk through
:func:`tissue_scores` with the same tile grid).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from histosam.errors import CheckpointError, ParameterError

__all__ = ["TissueResult", "tissue_scores", "segment_tissue", "tissue_tiling", "tissue_classes", "iter_windows"]


def tissue_classes(model) -> list[str]:
    """The tissue classes of a region model, background first; a clear error for models without a tissue head."""
    names = list((model.config.tissue or {}).get("classes") or [])
    if model.tissue_decoder is None or not names:
        raise CheckpointError(f"model {model.config.name or model.config.architecture!r} has no tissue head: use a "
                              "region model (histosam-tissue)")
    return names


def tissue_tiling(model, tile: int | None = None, halo: int | None = None) -> tuple[int, int]:
    """``(tile, halo)`` in working pixels: the model config's, else a frame-filling default (halo = frame / 8)."""
    frame = int(model.config.image_size)
    halo = int(halo if halo is not None else (model.config.halo if model.config.halo is not None else frame // 8))
    tile = int(tile if tile is not None else (model.config.tile if model.config.tile is not None else
                                             frame - 2 * halo))
    if halo < 0 or tile < 16 or tile + 2 * halo > frame:
        raise ParameterError(f"tissue tiling tile={tile}, halo={halo} does not fit the model frame ({frame} px): "
                             "tile + 2·halo must be at most the frame, tile at least 16")
    return tile, halo


def iter_windows(shape: tuple[int, int], tile: int, halo: int, region: tuple[int, int, int, int] | None = None
                 ) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """``(window, core)`` slices in array coordinates: the cores tile ``region`` (``(r0, c0, r1, c1)``, default
    the whole array) exactly once, on a grid starting at ``(r0, c0)``; each window is its core grown by ``halo``
    where the array has pixels."""
    h, w = shape
    r0, c0, r1, c1 = region if region is not None else (0, 0, h, w)
    for y0 in range(r0, r1, tile):
        for x0 in range(c0, c1, tile):
            core = (slice(y0, min(r1, y0 + tile)), slice(x0, min(c1, x0 + tile)))
            win = (slice(max(0, y0 - halo), min(h, y0 + tile + halo)),
                   slice(max(0, x0 - halo), min(w, x0 + tile + halo)))
            yield win, core


@torch.inference_mode()
def tissue_scores(model, rgb: np.ndarray, tile: int | None = None, halo: int | None = None,
                  batch_size: int = 4, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Per-channel scores ``(K+1)×h×w`` float32 in [0, 1] of an RGB ``H×W×3`` uint8 image **at the model's
    working resolution**: K class scores (background first) then the interior score (see
    :class:`~histosam.models.class_prompts.ClassPromptHead`). ``region`` ``(r0, c0, r1, c1)`` limits the output
    to that box (``h×w``), with the rest of the array as context; a slide chunk read with ``halo`` px of context
    around it gives the same scores as the whole image when its origin is on the tile grid."""
    tissue_classes(model)
    tile, halo = tissue_tiling(model, tile, halo)
    frame = int(model.config.image_size)
    r0, c0, r1, c1 = region if region is not None else (0, 0, *rgb.shape[:2])
    h, w = r1 - r0, c1 - c0
    out: np.ndarray | None = None
    windows = list(iter_windows(rgb.shape[:2], tile, halo, (r0, c0, r1, c1)))
    dtype = next(model.parameters()).dtype
    for start in range(0, len(windows), batch_size):
        group = windows[start:start + batch_size]
        x = torch.zeros(len(group), 3, frame, frame)
        crops = []
        for i, (win, _) in enumerate(group):
            crop = torch.from_numpy(np.ascontiguousarray(rgb[win])).permute(2, 0, 1).float()
            crops.append(crop.shape[-2:])
            x[i, :, : crop.shape[1], : crop.shape[2]] = crop
        x = model.preprocess(x.to(model.device), pad_to=frame)
        pad = torch.ones(len(group), 1, frame, frame, dtype=torch.bool)
        for i, (ch, cw) in enumerate(crops):
            pad[i, :, :ch, :cw] = False
        x = x.masked_fill(pad.to(x.device), 0.0).to(dtype)
        emb, _ = model.encode(x)
        logits = model.decode_tissue(emb, x).float()
        scores = F.interpolate(logits, size=(frame, frame), mode="bilinear", align_corners=False).sigmoid().cpu()
        if out is None:
            out = np.zeros((scores.shape[1], h, w), np.float32)
        for i, (win, core) in enumerate(group):
            dr, dc = core[0].start - win[0].start, core[1].start - win[1].start
            rh, cw = core[0].stop - core[0].start, core[1].stop - core[1].start
            out[:, core[0].start - r0:core[0].stop - r0, core[1].start - c0:core[1].stop - c0] = \
                scores[i, :, dr:dr + rh, dc:dc + cw].numpy()
    assert out is not None
    return out


def region_params(model, min_area_um2: float | None = None) -> dict:
    """Keyword arguments of :func:`~histosam.postprocess.regions.region_instances` that travel with the model
    (``config.tissue["postprocess"]``: ``interior_threshold``, ``seed_erosion_um``, ``min_area_um2``), with
    ``min_area_um2`` overridden when given."""
    params = dict((model.config.tissue or {}).get("postprocess") or {})
    if min_area_um2 is not None:
        params["min_area_um2"] = float(min_area_um2)
    return params


@dataclass
class TissueResult:
    """A segmented image at the **input** resolution.

    Attributes:
        class_map: ``H×W`` uint8 class index (0 = background; names in ``class_names``).
        instances: ``H×W`` int32 region instances (glands), 0 = none; each instance lies in one class.
        class_names: background first.
        scores: ``(K+1)×h×w`` float32 scores at the working resolution (``None`` unless kept).
        mpp: the input's µm/px; working_mpp: the model's.
    """

    class_map: np.ndarray
    instances: np.ndarray
    class_names: list[str]
    mpp: float
    working_mpp: float
    scores: np.ndarray | None = None
    instance_classes: dict[int, str] = field(default_factory=dict)


def segment_tissue(image: np.ndarray, model=None, mpp: float | None = None, tile: int | None = None,
                   halo: int | None = None, keep_scores: bool = False, min_area_um2: float | None = None
                   ) -> TissueResult:
    """Tissue classes and region instances of an RGB image (``H×W×3`` uint8) at ``mpp`` µm/px (default: the
    model's working resolution). ``model``: a loaded region model, a registry name, or ``None`` for
    ``histosam-tissue``."""
    from histosam.postprocess.regions import region_instances
    from histosam.registry.loader import load_model
    from histosam.tasks.nuclei import resample_labels, resample_rgb

    if model is None or isinstance(model, str):
        model = load_model(model or "histosam-tissue")
    names = tissue_classes(model)
    working = float(model.config.mpp or mpp or 1.0)
    mpp = float(mpp if mpp is not None else working)
    if image.ndim != 3 or image.shape[2] < 3:
        raise ParameterError(f"expected an RGB image H×W×3, got shape {image.shape}")
    rgb = np.ascontiguousarray(image[..., :3])
    if rgb.dtype != np.uint8:
        raise ParameterError(f"expected uint8 RGB, got {rgb.dtype}")
    small = resample_rgb(rgb, mpp / working)
    scores = tissue_scores(model, small, tile, halo)
    class_map, instances, inst_cls = region_instances(scores, working, **region_params(model, min_area_um2))
    class_map = resample_labels(class_map, rgb.shape[:2])
    instances = resample_labels(instances, rgb.shape[:2])
    return TissueResult(class_map.astype(np.uint8), instances.astype(np.int32), names, mpp, working,
                        scores if keep_scores else None, {k: names[v] for k, v in inst_cls.items()})
