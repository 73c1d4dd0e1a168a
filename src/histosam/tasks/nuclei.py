"""The nuclei recipe (AIS), written once: resample the image to the model's resolution, tile it as the model's
registration says, predict the instance maps, run the streaming chunk engine, and bring the labels back to the
input grid. ``histosam.segment``, the per-image job (``histosam segment``), the slide pipeline's tiling, grid
search and training validation all call it.

Frames: the *input* frame is the image as given (``mpp`` µm/px); the *working* frame is the image resampled by
``factor = mpp / model.config.mpp`` (1.0 when either is unknown or within 5 %). Tiles, halos, chunks and the
engine's label crops are in working pixels; :func:`segment_nuclei` returns labels in input pixels.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from histosam.postprocess.ais import AISParams

__all__ = ["AIS_KEYS", "NucleiJob", "resolve_model", "default_tiling", "rescale_factor", "resample_rgb",
           "resample_labels", "split_params", "check_job", "plan_nuclei", "iter_nuclei_chunks", "segment_nuclei",
           "nuclei_maps", "TypedNuclei", "segment_typed_nuclei"]

AIS_KEYS = frozenset(AISParams.__dataclass_fields__)

PredictMaps = Callable[[np.ndarray], np.ndarray]


def resolve_model(model: Any = None, device: str | None = None, require_decoder: bool = False,
                  allow_pickle: bool = False):
    """A loaded model from a model object, registry name, path or ``None`` (the embedded default)."""
    if model is None or isinstance(model, str | os.PathLike):
        from histosam.registry.loader import load_model

        return load_model(model, device=device, require_decoder=require_decoder, allow_pickle=allow_pickle)
    return model


def default_tiling(model, shape: tuple[int, int]) -> tuple[int, int]:
    """(tile, halo) for the engine, from the model's configuration (``config.tile`` / ``config.halo``) or else its
    architecture's registration (:func:`histosam.models.registry.default_tiling`).

    Native-resolution, fully convolutional models (nano): 1024 + 2·224 px tiles. The halo covers the receptive
    field (213 px, measured by back-propagation in tests/test_tiling_model_maps.py) and every tile is padded only
    to a multiple of 16, so the stitched maps, hence the labels, equal an untiled run whatever the tile size
    (StarDist's tiling invariant). ``resize_longest_side`` models (SAM, PathoSAM): an image up to 512 px a side is
    one tile (micro-sam's untiled path: the whole image is resized to the frame); larger images use PathoSAM's
    tiling, 384 + 2·64 px tiles each resized to the frame; these models see each tile rescaled, so no halo makes
    them tile-invariant."""
    from histosam.models.registry import architecture_tiling

    cfg = model.config
    tile, halo, whole_below = architecture_tiling(cfg.architecture)
    tile = getattr(cfg, "tile", None) or tile
    halo = halo if getattr(cfg, "halo", None) is None else cfg.halo
    if whole_below and max(shape) <= whole_below:
        return max(shape), 0
    return tile, halo


def rescale_factor(mpp: float | None, model) -> float:
    """Factor to resample an image at ``mpp`` µm/px to the model's working resolution (1.0 when unknown)."""
    if mpp is None or model.config.mpp is None:
        return 1.0
    factor = float(mpp) / float(model.config.mpp)
    return 1.0 if abs(factor - 1.0) < 0.05 else factor


def resample_rgb(image: np.ndarray, factor: float) -> np.ndarray:
    """``H×W×3 uint8`` resampled by ``factor`` (bilinear; at least 1 px a side)."""
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Labels on another grid by nearest pixel centre (the mapping :func:`histosam.pipeline.outputs.source_index`
    uses too)."""
    rows = np.minimum((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0], labels.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1], labels.shape[1] - 1).astype(int)
    return labels[rows[:, None], cols[None, :]]


def split_params(model, params: dict[str, Any]) -> tuple[AISParams, dict[str, Any]]:
    """(AIS parameters = model defaults + overrides, remaining engine keyword arguments)."""
    ais = {k: v for k, v in params.items() if k in AIS_KEYS}
    rest = {k: v for k, v in params.items() if k not in AIS_KEYS}
    defaults = {k: v for k, v in (getattr(model.config, "postprocess", None) or {}).items() if k in AIS_KEYS}
    return AISParams.from_dict({**defaults, **ais}), rest


def check_job(shape: tuple[int, int], factor: float, mpp: float | None, model: Any, *, tile: int | None = None,
              halo: int | None = None, chunk: int | None = None) -> None:
    """Refuse, before any work, options and sizes that cannot end well (:mod:`histosam.limits`): a tile, halo or
    chunk out of range, an upsampling above the limit, or an estimated memory use above what is available
    (``shape``: the input image's ``(H, W)``; ``factor``: the resampling to the model's resolution)."""
    from histosam.limits import check_memory, check_tiling, check_upsample

    check_tiling(tile, halo, chunk)
    check_upsample(factor, mpp, getattr(getattr(model, "config", None), "mpp", None))
    h, w = shape
    work_px = round(h * factor) * round(w * factor)
    # input RGB + labels (uint32) + the resampled RGB; the engine's own buffers are bounded by the chunk
    estimate = h * w * 7 + (work_px * 3 if factor != 1.0 else 0) + 512 * 2**20
    check_memory(estimate, f"a {w}×{h} image ({round(w * factor)}×{round(h * factor)} px at the model's "
                           "resolution)", "give the right --mpp, or use `histosam slide` for very large images")


@dataclasses.dataclass
class NucleiJob:
    """The recipe's decisions for one image (all sizes in working pixels).

    Attributes:
        factor: input → working resampling factor; work_shape: ``(H, W)`` of the working image.
        tile, halo, chunk: engine geometry; ais: post-processing parameters (model defaults + overrides);
        engine: the engine's other options (``context``, ``completeness``, ...); batch_size: tiles per batch.
        predict_maps: ``uint8 B×h×w×3 -> float32 B×C×h×w`` (the model's instance head, or a given predictor).
    """

    factor: float
    work_shape: tuple[int, int]
    tile: int
    halo: int
    chunk: int
    ais: AISParams
    engine: dict[str, Any]
    batch_size: int
    predict_maps: PredictMaps
    #: class names of the class head whose probabilities follow the 3 AIS maps (empty: no classes)
    class_names: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return 3 + len(self.class_names)

    def settings(self) -> dict[str, Any]:
        """JSON-able record of the decisions (provenance)."""
        return {"tile": self.tile, "halo": self.halo, "chunk": self.chunk, "resample_factor": self.factor,
                "working_shape": list(self.work_shape), "ais": self.ais.to_dict(), "engine": dict(self.engine),
                "classes": list(self.class_names)}


def plan_nuclei(model: Any, shape: tuple[int, int], mpp: float | None = None, *, tile: int | None = None,
                halo: int | None = None, chunk: int = 1024, batch_size: int = 4, device: str | None = None,
                precision: str = "auto", params: dict[str, Any] | None = None,
                predict_maps: PredictMaps | None = None, classes: bool | None = None) -> NucleiJob:
    """Decide resampling, tiling and parameters for an input image of ``shape`` at ``mpp`` and check the limits.

    ``classes``: also predict the class head's probabilities (each chunk result then carries every nucleus'
    mean class probabilities); ``None``: when the model has a class head.
    ``model=None`` with a ``predict_maps`` runs the engine on that predictor at the input resolution (tests,
    benchmarks). Raises :class:`~histosam.errors.HistosamError` subclasses for bad options or sizes."""
    params = dict(params or {})
    if model is not None:
        ais, engine = split_params(model, params)
        factor = rescale_factor(mpp, model)
    else:
        engine = {k: v for k, v in params.items() if k not in AIS_KEYS}
        ais = AISParams.from_dict({k: v for k, v in params.items() if k in AIS_KEYS})
        factor = 1.0
    work_shape = (max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))) if factor != 1.0 else \
        tuple(shape)
    d_tile, d_halo = default_tiling(model, work_shape) if model is not None else (384, 64)
    given = tile is not None or halo is not None  # then the tile and halo actually used are checked (defaults too)
    check_job(shape, factor, mpp, model, tile=(tile or d_tile) if given else None,
              halo=(d_halo if halo is None else halo) if given else None, chunk=chunk)
    has_head = model is not None and getattr(model, "class_decoder", None) is not None
    if classes and not has_head:
        from histosam.errors import CheckpointError

        raise CheckpointError("this model has no class head: typed nuclei need a model with one")
    with_classes = has_head if classes is None else bool(classes)
    names = tuple(model.config.class_names) if with_classes else ()
    if predict_maps is None:
        from histosam.inference.maps import make_map_predictor

        predict_maps = make_map_predictor(model, device, precision, encoder_batch=batch_size,
                                          with_classes=with_classes)
    return NucleiJob(factor, (int(work_shape[0]), int(work_shape[1])), tile or d_tile,
                     d_halo if halo is None else halo, chunk, ais, engine, batch_size, predict_maps, names)


def iter_nuclei_chunks(job: NucleiJob, work: np.ndarray) -> Iterator[Any]:
    """The engine's chunk results (:class:`~histosam.tiling.engine.ChunkResult`, working frame) on the working
    image ``work`` (``H×W×3 uint8`` of ``job.work_shape``)."""
    from histosam.tiling.engine import iter_ais_chunks

    def read_region(r0: int, c0: int, h: int, w: int) -> np.ndarray:
        return work[r0: r0 + h, c0: c0 + w]

    return iter_ais_chunks(read_region, job.work_shape, job.predict_maps, tile=job.tile, halo=job.halo,
                           chunk=job.chunk, params=job.ais, batch_size=job.batch_size, channels=job.channels,
                           **job.engine)


def segment_nuclei(rgb: np.ndarray, model: Any, mpp: float | None = None, **options: Any) -> np.ndarray:
    """The whole recipe on an in-memory ``H×W×3 uint8`` image: uint32 ``H×W`` labels in the input frame, ids
    1..N. ``options`` are :func:`plan_nuclei`'s keyword arguments."""
    from histosam.tiling.engine import segment_array

    options.setdefault("classes", False)  # labels only: the class head is not run
    job = plan_nuclei(model, rgb.shape[:2], mpp, **options)
    work = resample_rgb(rgb, job.factor) if job.factor != 1.0 else rgb
    labels = segment_array(work, job.predict_maps, tile=job.tile, halo=job.halo, chunk=job.chunk, params=job.ais,
                           batch_size=job.batch_size, **job.engine)
    if job.factor != 1.0:
        labels = resample_labels(labels, rgb.shape[:2])
    return labels.astype(np.uint32, copy=False)


def nuclei_maps(model: Any, rgb: np.ndarray, mpp: float | None = None, *, precision: str = "auto",
                device: str | None = None) -> tuple[np.ndarray, float]:
    """The instance maps (``float32 C×h×w``, working frame) of a whole image, stitched tile by tile as the recipe
    predicts them, and the input → working factor (grid search: maps once, many watersheds)."""
    from histosam.tiling.grid import Box, TileGrid
    from histosam.tiling.maps import MapAssembler

    job = plan_nuclei(model, rgb.shape[:2], mpp, precision=precision, device=device, classes=False)
    work = resample_rgb(rgb, job.factor) if job.factor != 1.0 else rgb
    h, w = job.work_shape
    asm = MapAssembler(TileGrid((h, w), job.tile, job.halo), lambda r, c, hh, ww: work[r:r + hh, c:c + ww],
                       job.predict_maps)
    return asm.maps_for(Box(0, 0, h, w)), job.factor


@dataclasses.dataclass
class TypedNuclei:
    """Labels with a class per nucleus.

    Attributes:
        labels: uint32 ``H×W`` in the input frame, ids 1..N.
        class_names: the class head's names, background first.
        classes: int64 ``(N,)`` class index of nucleus ``i + 1`` in ``1..K-1`` (the argmax of its mean
            probabilities over the nucleus classes: AIS decided it is a nucleus, the head types it).
        probabilities: float32 ``(N, K)`` mean class probabilities (background included, for flagging).
    """

    labels: np.ndarray
    class_names: tuple[str, ...]
    classes: np.ndarray
    probabilities: np.ndarray

    def counts(self) -> dict[str, int]:
        """Nuclei per class name (every nucleus class listed)."""
        return {name: int((self.classes == k).sum()) for k, name in enumerate(self.class_names) if k > 0}


def segment_typed_nuclei(rgb: np.ndarray, model: Any, mpp: float | None = None, **options: Any) -> TypedNuclei:
    """The recipe with the model's class head: labels (input frame) plus each nucleus' class and probabilities.
    ``options`` are :func:`plan_nuclei`'s keyword arguments."""
    from histosam.tiling.engine import paste_chunk

    job = plan_nuclei(model, rgb.shape[:2], mpp, classes=True, **options)
    work = resample_rgb(rgb, job.factor) if job.factor != 1.0 else rgb
    labels = np.zeros(job.work_shape, np.uint32)
    probs: list[np.ndarray] = []
    n = 0
    for res in iter_nuclei_chunks(job, work):
        if res.n == 0:
            continue
        paste_chunk(labels, res, n)
        probs.append(res.class_probs)
        n += res.n
    k = len(job.class_names)
    p = np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, k), np.float32)
    if job.factor != 1.0:
        from skimage.segmentation import relabel_sequential

        labels = resample_labels(labels, rgb.shape[:2])
        labels, fw, _ = relabel_sequential(labels)  # nuclei lost when downsampling drop out with their rows
        old_ids = np.asarray(fw.in_values)
        p = p[old_ids[old_ids > 0] - 1]  # new id j is old id old_ids[j], in order
    classes = 1 + np.argmax(p[:, 1:], axis=1) if len(p) else np.zeros(0, np.int64)
    return TypedNuclei(labels.astype(np.uint32, copy=False), job.class_names, classes.astype(np.int64), p)
