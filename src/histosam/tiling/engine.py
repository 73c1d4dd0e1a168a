"""Streaming chunk engine for automatic instance segmentation (AIS) of images of any size.

Stages (separate so a whole-slide driver can pipeline or replace them):

1. read + infer: :class:`~histosam.tiling.maps.MapAssembler` gives the stitched decoder maps on any box;
2. post-process: :func:`postprocess_chunk` (pure function of the maps of one chunk) -> :class:`ChunkResult`;
3. write: :func:`paste_chunk` into a label array, or polygons/GeoJSON via ``histosam.measure``/``io``.

Chunks are the inner boxes of a ``TileGrid(shape, chunk)``; they partition the image and are processed in
raster order. Chunk *k* is post-processed on its read region ``R = write box ± context`` (clipped), with
the smoothing computed on ``R ± r`` (``r`` = gaussian kernel radius, added automatically), so the
smoothed maps, thresholds and markers inside R equal those of the whole image exactly.

Ownership: an object is kept by the chunk whose write box contains its first pixel in raster order (the
lowest (row, col)); exactly one chunk owns each object. Local ids of a chunk follow the raster order of
first pixels; :func:`segment_array` adds a running offset, so global ids follow (chunk raster order, first
pixel).

Exactness: an owned object is *complete* when the 8-connected foreground component holding it does not
touch a side of R that is interior to the image (``completeness="component"``). Then the object equals the
one ``watershed_from_maps`` finds on the whole stitched maps: the watershed floods each 4-connected mask
component independently and its pixel order inside a component depends only on that component (values
and raster order; the one exception is an exact float tie between two different markers' seed pixels
next to the same pixel, where skimage's heap order decides). With ``completeness="object"`` only the
object itself must stay clear of the cut sides: cheaper context, but the watershed of a foreground clump
cut by R's border may then differ near the cut. Objects that are not complete trigger
``on_incomplete``: ``"enlarge"`` re-runs the chunk with twice the context (up to ``max_context``, then
warns), ``"warn"`` keeps the local version with an :class:`IncompleteObjectWarning`, ``"error"`` raises.
Choose ``context`` >= the largest foreground clump (nuclei at 40x: 64-128 px; dense clumps more).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator

import numpy as np
from scipy import ndimage as ndi

from histosam.errors import IncompleteObjectError, IncompleteObjectWarning
from histosam.postprocess.ais import (
    AISParams,
    ParameterError,
    smooth_maps,
    watershed_from_smoothed,
)
from histosam.tiling.grid import Box, TileGrid
from histosam.tiling.maps import MapAssembler, PredictMaps, ReadRegion, TileFilter

__all__ = [
    "ChunkResult",
    "IncompleteObjectWarning",
    "IncompleteObjectError",
    "postprocess_chunk",
    "iter_ais_chunks",
    "paste_chunk",
    "segment_array",
]

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclasses.dataclass
class ChunkResult:
    """Objects owned by one chunk, with id-free global geometry.

    Attributes:
        index: chunk index (raster order over the chunk grid).
        box: the chunk's write box (global (row, col)).
        offset: global (row, col) of ``labels[0, 0]``.
        labels: uint32 crop with local ids 1..n (0 elsewhere, including other chunks' objects); covers the
            union of the owned objects' bounding boxes (may extend beyond ``box``); shape (0, 0) when n=0.
        bboxes: int64 n×4 global ``(r0, c0, r1, c1)`` half-open boxes, row i = local id i+1.
        first_pixels: int64 n×2 global (row, col) of each object's first pixel in raster order.
        areas: int64 n pixel counts.
        context: context (px) the chunk was finally processed with.
        n_incomplete: owned objects kept although they touched the cut border (0 when exact).
        scores: float32 n mean (unsmoothed) foreground probability of each object (the model score).
    """

    index: int
    box: Box
    offset: tuple[int, int]
    labels: np.ndarray
    bboxes: np.ndarray
    first_pixels: np.ndarray
    areas: np.ndarray
    context: int
    n_incomplete: int = 0
    scores: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    #: float32 n×K mean class probabilities of each object (maps with a class head's channels), else ``None``
    class_probs: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.areas.shape[0])


def _cut_border_lines(seg_shape: tuple[int, int], region: Box, shape: tuple[int, int]) -> list[tuple]:
    """Index tuples of the sides of ``region`` that are interior to an image of ``shape``."""
    h, w = seg_shape
    lines = []
    if region.r0 > 0:
        lines.append((0, slice(None)))
    if region.r1 < shape[0]:
        lines.append((h - 1, slice(None)))
    if region.c0 > 0:
        lines.append((slice(None), 0))
    if region.c1 < shape[1]:
        lines.append((slice(None), w - 1))
    return lines


def postprocess_chunk(
    maps: np.ndarray,
    maps_box: Box,
    read_box: Box,
    write_box: Box,
    image_shape: tuple[int, int],
    params: AISParams,
    *,
    index: int = 0,
    context: int = 0,
    completeness: str = "component",
) -> tuple[ChunkResult, int]:
    """Post-process one chunk; returns ``(result, n_incomplete_owned)``.

    Args:
        maps: float32 C×h×w stitched maps on ``maps_box`` (must contain ``read_box`` ± smoothing radius,
            clipped to the image): the 3 AIS maps, then (C > 3) class probabilities averaged per object.
        read_box: region R the watershed runs on; ``write_box`` ⊂ R: the chunk that owns objects.
        image_shape: (H, W) of the whole image (to tell image borders from cut borders).
    The result keeps incomplete owned objects too (counted in ``n_incomplete``); callers decide.
    """
    fg, cd, bd = smooth_maps(maps[:3], params)  # the AIS maps; further channels are class probabilities
    crop = read_box.local_to(maps_box)
    seg, fg_mask = watershed_from_smoothed(fg[crop], cd[crop], bd[crop], params)
    r_off, c_off = read_box.r0, read_box.c0
    slices = ndi.find_objects(seg)
    ids, firsts = [], []
    wb = write_box
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        top = sl[0].start
        col = sl[1].start + int(np.argmax(seg[top, sl[1]] == i))
        if wb.contains(top + r_off, col + c_off):
            ids.append(i)
            firsts.append((top, col))
    empty = ChunkResult(
        index,
        write_box,
        (wb.r0, wb.c0),
        np.zeros((0, 0), np.uint32),
        np.zeros((0, 4), np.int64),
        np.zeros((0, 2), np.int64),
        np.zeros(0, np.int64),
        context,
    )
    if not ids:
        return empty, 0
    ids_a = np.asarray(ids)
    first_a = np.asarray(firsts, dtype=np.int64)
    counts = np.bincount(seg.ravel(), minlength=len(slices) + 1)
    lines = _cut_border_lines(seg.shape, read_box, image_shape)
    incomplete = np.zeros(len(ids), bool)
    if lines:
        if completeness == "component":
            comp, _ = ndi.label(fg_mask, structure=_EIGHT)
            bad = np.unique(np.concatenate([comp[ln] for ln in lines]))
            incomplete = np.isin(comp[first_a[:, 0], first_a[:, 1]], bad[bad > 0])
        elif completeness == "object":
            bad = np.unique(np.concatenate([seg[ln] for ln in lines]))
            incomplete = np.isin(ids_a, bad[bad > 0])
        else:
            raise ParameterError(f"completeness must be 'component' or 'object', got {completeness!r}")
    keep = counts[ids_a] >= max(1, params.min_size)
    ids_a, first_a, inc = ids_a[keep], first_a[keep], incomplete[keep]
    n_inc = int(incomplete.sum())
    if ids_a.size == 0:
        return empty, n_inc
    order = np.lexsort((first_a[:, 1], first_a[:, 0]))
    ids_a, first_a = ids_a[order], first_a[order]
    boxes = np.array(
        [[slices[i - 1][0].start, slices[i - 1][1].start, slices[i - 1][0].stop, slices[i - 1][1].stop] for i in ids_a],
        dtype=np.int64,
    )
    lo, hi = boxes[:, :2].min(0), boxes[:, 2:].max(0)
    lut = np.zeros(len(slices) + 1, np.uint32)
    lut[ids_a] = np.arange(1, ids_a.size + 1, dtype=np.uint32)
    labels = lut[seg[lo[0] : hi[0], lo[1] : hi[1]]]
    fg_raw = maps[0][crop]
    fg_sums = np.bincount(seg.ravel(), weights=fg_raw.ravel().astype(np.float64), minlength=len(slices) + 1)
    scores = (fg_sums[ids_a] / np.maximum(counts[ids_a], 1)).astype(np.float32)
    class_probs = None
    if maps.shape[0] > 3:  # a class head's probabilities: mean over each object's pixels (unsmoothed)
        flat = seg.ravel()
        class_probs = np.stack([
            np.bincount(flat, weights=maps[c][crop].ravel().astype(np.float64), minlength=len(slices) + 1)[ids_a]
            for c in range(3, maps.shape[0])], axis=1) / np.maximum(counts[ids_a], 1)[:, None]
        class_probs = class_probs.astype(np.float32)
    shift = np.array([r_off, c_off, r_off, c_off], np.int64)
    result = ChunkResult(
        index=index,
        box=write_box,
        offset=(int(lo[0] + r_off), int(lo[1] + c_off)),
        labels=labels,
        bboxes=boxes + shift,
        first_pixels=first_a + shift[:2],
        areas=counts[ids_a].astype(np.int64),
        context=context,
        n_incomplete=int(inc.sum()),
        scores=scores,
        class_probs=class_probs,
    )
    return result, n_inc


def iter_ais_chunks(
    read_region: ReadRegion,
    shape: tuple[int, int],
    predict_maps: PredictMaps,
    *,
    tile: int = 384,
    halo: int = 64,
    chunk: int = 1024,
    context: int = 128,
    params: AISParams | dict | None = None,
    batch_size: int = 8,
    tile_filter: TileFilter | None = None,
    completeness: str = "component",
    on_incomplete: str = "enlarge",
    max_context: int | None = None,
    cache_mb: float = 1024.0,
    channels: int = 3,
) -> Iterator[ChunkResult]:
    """Yield one :class:`ChunkResult` per chunk (raster order) of an image of ``shape`` (H, W).

    Memory is bounded by the chunk (maps on ``(chunk + 2·context + 2·r)²`` px) plus the tile cache
    (``cache_mb``); the image is only read through ``read_region``. See the module docstring for
    ownership, exactness, ``completeness`` and ``on_incomplete``. ``max_context`` defaults to
    ``max(8 * context, 1024)``. ``channels``: what ``predict_maps`` returns per tile (3 AIS maps, then a class
    head's probabilities: each result then carries every object's mean class probabilities).
    """
    if not isinstance(params, AISParams):
        params = AISParams.from_dict(params)
    if on_incomplete not in ("enlarge", "warn", "error"):
        raise ParameterError(f"on_incomplete must be 'enlarge', 'warn' or 'error', got {on_incomplete!r}")
    if completeness not in ("component", "object"):
        raise ParameterError(f"completeness must be 'component' or 'object', got {completeness!r}")
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ParameterError(f"context must be an integer >= 0, got {context!r}")
    max_context = max(8 * context, 1024) if max_context is None else max(int(max_context), context)
    shape = (int(shape[0]), int(shape[1]))
    grid = TileGrid(shape, tile, halo)
    chunks = TileGrid(shape, chunk, 0)
    r = params.smoothing_radius
    boxes = [c.inner.grow(context, shape).grow(r, shape) for c in chunks]
    assembler = MapAssembler(
        grid,
        read_region,
        predict_maps,
        batch_size=batch_size,
        tile_filter=tile_filter,
        schedule=boxes,
        cache_mb=cache_mb,
        channels=channels,
    )
    for ch in chunks:
        ctx = context
        while True:
            read_box = ch.inner.grow(ctx, shape)
            maps_box = read_box.grow(r, shape)
            maps = assembler.maps_for(maps_box, step=None)
            result, n_inc = postprocess_chunk(
                maps,
                maps_box,
                read_box,
                ch.inner,
                shape,
                params,
                index=ch.index,
                context=ctx,
                completeness=completeness,
            )
            if n_inc == 0:
                break
            whole = read_box == Box(0, 0, shape[0], shape[1])
            if on_incomplete == "enlarge" and ctx < max_context and not whole:
                ctx = min(max(2 * ctx, 1), max_context)
                continue
            msg = (
                f"chunk {ch.index} {tuple(ch.inner)}: {n_inc} object(s) reach the border of the "
                f"read region with context {ctx} px; results near them may differ from untiled "
                f"post-processing (increase context)"
            )
            if on_incomplete == "error":
                raise IncompleteObjectError(msg)
            warnings.warn(msg, IncompleteObjectWarning, stacklevel=2)
            break
        nxt = ch.index + 1
        keep_from = chunks[nxt].inner.r0 - max_context - r if nxt < len(chunks) else None
        assembler.release(ch.index, keep_from_row=keep_from)
        yield result


def paste_chunk(out: np.ndarray, result: ChunkResult, id_offset: int) -> None:
    """Write a chunk's objects into a global label array ``out`` (H×W) with ids ``id_offset + local id``.

    Only the objects' own pixels are written.
    """
    if result.n == 0:
        return
    r0, c0 = result.offset
    h, w = result.labels.shape
    view = out[r0 : r0 + h, c0 : c0 + w]
    m = result.labels > 0
    view[m] = result.labels[m] + np.uint32(id_offset)


def segment_array(
    image: np.ndarray,
    predict_maps: PredictMaps,
    tile: int = 384,
    halo: int = 64,
    chunk: int = 1024,
    params: AISParams | dict | None = None,
    **kwargs,
) -> np.ndarray:
    """AIS of an in-memory ``H×W×3 uint8`` image through the chunk engine -> uint32 H×W labels.

    Ids are 1..N in (owning chunk raster order, first pixel raster order). ``kwargs`` go to
    :func:`iter_ais_chunks` (``context``, ``batch_size``, ``completeness``, ``on_incomplete``, ...).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ParameterError(f"image must be H×W×3 uint8, got {image.dtype} {image.shape}")

    def read_region(r0: int, c0: int, h: int, w: int) -> np.ndarray:
        return image[r0 : r0 + h, c0 : c0 + w]

    out = np.zeros(image.shape[:2], np.uint32)
    n = 0
    for res in iter_ais_chunks(
        read_region, image.shape[:2], predict_maps, tile=tile, halo=halo, chunk=chunk, params=params, **kwargs
    ):
        paste_chunk(out, res, n)
        n += res.n
    return out
