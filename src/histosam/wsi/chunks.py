"""One slide as a grid of chunks: planning, per-chunk AIS and chunk results as plain records.

Frames:
- *level-0*: the slide's full-resolution pixels ``(x, y)``; polygons and centroids are written in it
  (QuPath's frame). Objects are measured in the working frame and mapped to level-0 by ``s``
  (:func:`chunk_records`, :mod:`histosam.measure`).
- *working frame*: pixels at ``target_mpp`` µm/px, ``s = target_mpp / slide_mpp`` level-0 px each.
- *region frame*: the working frame shifted to the processed region's top-left ``(rx, ry)`` (whole slide
  or ROI bounding box); the tiling engine works in it, as ``(row, col)`` arrays.

A chunk is a ``chunk x chunk`` box of the region frame (``histosam.tiling`` grid); it owns the objects
whose first pixel lies in it (the engine's ownership rule), so chunks can run in any order, in any
process, and the final merge in chunk raster order is deterministic.

Typed nuclei: when the plan has ``class_names`` (a class head, background first), ``predict_maps`` returns
the 3 AIS maps then the head's K probabilities; the engine averages them over each nucleus' pixels (seam-free,
:class:`~histosam.tiling.engine.ChunkResult.class_probs`) and every record gains ``class`` (the argmax over the
nucleus classes: AIS decided it is a nucleus, so the background class is never chosen; its probability is kept
to flag doubtful ones) and one ``prob_<name>`` per class: the column names of ``histosam segment``'s table.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from histosam.postprocess.ais import AISParams
from histosam.tiling.engine import ChunkResult, postprocess_chunk
from histosam.tiling.grid import Box, TileGrid
from histosam.tiling.maps import MapAssembler, PredictMaps
from histosam.wsi.prefetch import Prefetcher
from histosam.wsi.reader import SlideReader, open_slide
from histosam.wsi.roi import Roi
from histosam.wsi.tissue import TissueMask

#: version of what :func:`chunk_records` stores (part of the plan's fingerprint, so a chunk store written with
#: another record layout is refused, never merged): 2 = histosam.measure's table columns + the outline's geometry
RECORDS_SCHEMA = 2


@dataclasses.dataclass
class SlidePlan:
    """Everything a worker needs to process any chunk of one slide (picklable, small).

    ``region`` = ``(rx, ry, width, height)`` in working-frame pixels; ``tissue`` the low-resolution
    mask (or ``None`` = everything is tissue); ``roi`` restricts tiles and objects to a polygon/box.
    """

    path: str
    slide_mpp: float
    mpp_source: str
    target_mpp: float
    region: tuple[int, int, int, int]
    tile: int = 384
    halo: int = 64
    chunk: int = 2048
    context: int = 128
    max_context: int = 1024
    batch_size: int = 8
    params: dict = dataclasses.field(default_factory=dict)
    tissue: TissueMask | None = None
    roi: Roi | None = None
    #: the class head's names, background first (empty: no classes); the maps then have 3 + K channels
    class_names: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        """Level-0 pixels per working pixel."""
        return self.target_mpp / self.slide_mpp

    @property
    def shape(self) -> tuple[int, int]:
        return (self.region[3], self.region[2])

    @property
    def channels(self) -> int:
        """Channels ``predict_maps`` returns: the 3 AIS maps, then one probability per class."""
        return 3 + len(self.class_names)

    def chunk_grid(self) -> TileGrid:
        return TileGrid(self.shape, self.chunk, 0)

    def has_tissue(self, box: Box) -> bool:
        """Whether region-frame ``box`` touches tissue (and the ROI)."""
        rx, ry = self.region[0], self.region[1]
        x, y, w, h = rx + box.c0, ry + box.r0, box.c1 - box.c0, box.r1 - box.r0
        if self.roi is not None:
            s = self.scale
            margin = (self.halo + self.context) * s  # keep context around objects at the ROI edge
            if not self.roi.intersects_box(x * s, y * s, w * s, h * s, margin=margin):
                return False
        return self.tissue is None or self.tissue.fraction(x, y, w, h, self.target_mpp) > 0

    def todo_chunks(self) -> list[int]:
        """Indices (raster order) of chunks that intersect tissue."""
        return [c.index for c in self.chunk_grid() if self.has_tissue(c.inner)]

    def fingerprint(self) -> dict:
        """What must match for stored chunk results to be reused."""
        fp = {
            "slide_mpp": self.slide_mpp, "target_mpp": self.target_mpp, "region": list(self.region),
            "tile": self.tile, "halo": self.halo, "chunk": self.chunk, "context": self.context,
            "params": AISParams.from_dict(self.params).to_dict(), "records": RECORDS_SCHEMA,
        }
        if self.class_names:  # only then: the run keys of unclassified runs stay as they were
            fp["classes"] = list(self.class_names)
        return fp


def make_plan(
    slide: SlideReader,
    target_mpp: float,
    *,
    roi: Roi | None = None,
    tissue: TissueMask | None = None,
    **kwargs,
) -> SlidePlan:
    """Plan a slide at ``target_mpp``; the region is the ROI's bounding box or the whole slide."""
    s = target_mpp / slide.mpp
    w0, h0 = slide.dimensions
    if roi is not None:
        x0, y0 = int(np.floor(max(roi.x, 0) / s)), int(np.floor(max(roi.y, 0) / s))
        x1 = int(np.ceil(min(roi.x + roi.w, w0) / s))
        y1 = int(np.ceil(min(roi.y + roi.h, h0) / s))
        if x1 <= x0 or y1 <= y0:
            from histosam.wsi.roi import RoiError

            raise RoiError(f"ROI {roi.bbox} lies outside the slide ({w0}x{h0})")
        region = (x0, y0, x1 - x0, y1 - y0)
    else:
        region = (0, 0, max(1, int(round(w0 / s))), max(1, int(round(h0 / s))))
    return SlidePlan(str(slide.path), slide.mpp, slide.mpp_source, float(target_mpp), region,
                     tissue=tissue, roi=roi, **kwargs)


def _reader_fns(plan: SlidePlan, slide: SlideReader):
    rx, ry = plan.region[0], plan.region[1]

    def read_region(r0: int, c0: int, h: int, w: int) -> np.ndarray:
        return slide.read_at_mpp(rx + c0, ry + r0, w, h, plan.target_mpp)

    return read_region, plan.has_tissue


def process_chunks(
    plan: SlidePlan,
    indices: list[int],
    predict_maps: PredictMaps,
    slide: SlideReader | None = None,
    cache_mb: float = 512.0,
    prefetch: int = 16,
    stats: dict | None = None,
) -> Iterator[tuple[int, list[dict]]]:
    """Yield ``(index, records)`` for the given chunks (in the given order), sharing one tile cache.

    ``records`` come from :func:`chunk_records`. Only these chunks' maps are predicted; tiles are read
    ``prefetch`` ahead by a background thread. ``cache_mb`` budgets the 3 AIS maps of the cached tiles; with a class
    head's K more channels it grows by ``(3 + K) / 3``, so as many tiles stay cached (and none is predicted twice)
    as without classes (CMU-1-Small-Region, 256 MB: 25 tiles predicted for 22 before this). ``stats`` (a dict,
    updated in place) receives ``tiles_predicted`` and ``tiles_skipped``.
    """
    stats = {} if stats is None else stats
    fetcher = None
    own = slide is None
    if own:
        slide = open_slide(plan.path, mpp=plan.slide_mpp)
    try:
        params = AISParams.from_dict(plan.params)
        shape = plan.shape
        r = params.smoothing_radius
        grid = TileGrid(shape, plan.tile, plan.halo)
        chunks = plan.chunk_grid()
        read_region, tile_filter = _reader_fns(plan, slide)
        read_rgb = read_region  # the image under each chunk's objects, for the measurements (not prefetched)
        schedule = [chunks[i].inner.grow(plan.context, shape).grow(r, shape) for i in indices]
        if prefetch > 0:
            order = dict.fromkeys(t for box in schedule for t in grid.tiles_covering(box))
            outers = [grid[t].outer for t in order]
            keys = [(b.r0, b.c0, b.r1 - b.r0, b.c1 - b.c0) for b in outers if tile_filter(b)]
            fetcher = Prefetcher(read_region, keys, ahead=prefetch)
            read_region = fetcher
        assembler = MapAssembler(grid, read_region, predict_maps, batch_size=plan.batch_size,
                                 tile_filter=tile_filter, schedule=schedule, cache_mb=cache_mb * plan.channels / 3,
                                 channels=plan.channels)
        pool = ThreadPoolExecutor(1, thread_name_prefix="histosam-post")
        pending: deque = deque()

        def post(maps, maps_box, read_box, inner, i, ctx):
            res, n_inc = postprocess_chunk(maps, maps_box, read_box, inner, shape, params, index=i, context=ctx)
            return res, n_inc, (chunk_records(plan, res, read_rgb) if n_inc == 0 else None)

        def finish(i, inner, fut):
            res, n_inc, recs = fut.result()
            ctx = plan.context
            while n_inc and ctx < plan.max_context and inner.grow(ctx, shape) != Box(0, 0, *shape):
                ctx = min(max(2 * ctx, 16), plan.max_context)  # rare: redo with more context, in this thread
                read_box = inner.grow(ctx, shape)
                maps_box = read_box.grow(r, shape)
                res, n_inc = postprocess_chunk(assembler.maps_for(maps_box), maps_box, read_box, inner, shape,
                                               params, index=i, context=ctx)
                recs = None
            if n_inc:
                warnings.warn(f"{plan.path}: chunk {i}: {n_inc} object(s) cut by the chunk context "
                              f"({ctx} px); raise context", stacklevel=3)
            return i, (chunk_records(plan, res, read_rgb) if recs is None else recs)

        try:
            # maps of chunk k+1 are predicted while chunk k is post-processed in the pool thread
            for step, i in enumerate(indices):
                inner = chunks[i].inner
                read_box = inner.grow(plan.context, shape)
                maps_box = read_box.grow(r, shape)
                maps = assembler.maps_for(maps_box)
                assembler.release(step)
                stats["tiles_predicted"] = assembler.tiles_predicted
                stats["tiles_skipped"] = assembler.tiles_skipped
                pending.append((i, inner, pool.submit(post, maps, maps_box, read_box, inner, i, plan.context)))
                del maps
                if len(pending) > 1:
                    yield finish(*pending.popleft())
            while pending:
                yield finish(*pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if fetcher is not None:
            fetcher.close()
        if own:
            slide.close()


def chunk_records(plan: SlidePlan, res: ChunkResult,
                  read_rgb: Callable[[int, int, int, int], np.ndarray] | None = None) -> list[dict]:
    """Objects of a chunk as JSON-able dicts in raster order of first pixels, measured on the worker.

    The chunk's label crop and the image crop under it (``read_rgb(r0, c0, h, w)``: region-frame box at the
    working resolution; ``None`` opens the slide) go through :func:`histosam.measure.measure_objects` at the
    working resolution with ``offset`` = the crop's working-frame position and ``scale`` = ``plan.scale``, so
    outlines and pixel values are in level-0 pixels and µm values use the slide's µm/px (the convention of
    :mod:`histosam.measure`, the same as ``histosam segment``'s).

    Keys: ``first`` (region-frame row, col), ``geometry`` (GeoJSON geometry dict of the outline, level-0
    ``(x, y)`` rounded to 0.01 px) and every column of the measurement table but ``id``
    (:func:`histosam.measure.table_columns`), as plain floats; with ``plan.class_names`` also ``class`` (name)
    and ``prob_<name>`` per class (:func:`class_columns`). Objects whose first pixel is outside the ROI polygon
    are dropped.
    """
    from histosam.io.geojson import geometry_dicts
    from histosam.measure import measure_objects

    if res.n == 0:
        return []
    s = plan.scale
    rx, ry = plan.region[0], plan.region[1]
    keep = np.arange(1, res.n + 1)
    if plan.roi is not None and plan.roi.polygons:
        fr, fc = res.first_pixels[:, 0], res.first_pixels[:, 1]
        inside = [bool(plan.roi.mask((rx + c + 0.5) * s - 0.5, (ry + r + 0.5) * s - 0.5, 1, 1)[0, 0])
                  for r, c in zip(fr.tolist(), fc.tolist())]
        keep = keep[np.asarray(inside, bool)]
        if keep.size == 0:
            return []
    o_r, o_c = res.offset
    h, w = res.labels.shape
    if read_rgb is None:
        with open_slide(plan.path, mpp=plan.slide_mpp) as slide:
            rgb = slide.read_at_mpp(rx + o_c, ry + o_r, w, h, plan.target_mpp)
    else:
        rgb = read_rgb(o_r, o_c, h, w)
    table, outlines = measure_objects(res.labels, rgb, scores=res.scores, mpp=plan.slide_mpp,
                                      offset=(ry + o_r, rx + o_c), scale=s, keep=keep)
    rows = table.drop(columns="id").to_dict("records")
    firsts = res.first_pixels[keep - 1].tolist()
    recs = [{"first": first, "geometry": geom, **{k: float(v) for k, v in row.items()}}
            for first, geom, row in zip(firsts, geometry_dicts(outlines), rows)]
    if plan.class_names:
        names = plan.class_names
        if res.class_probs is None or res.class_probs.shape[1] != len(names):
            got = None if res.class_probs is None else res.class_probs.shape[1]
            raise ValueError(f"the maps carry {got} class probabilities, the plan has {len(names)} classes")
        probs = res.class_probs[keep - 1].astype(np.float64)
        best = 1 + np.argmax(probs[:, 1:], axis=1)
        for rec, k, row in zip(recs, best.tolist(), probs.tolist()):
            rec["class"] = names[k]
            rec.update({f"prob_{name}": v for name, v in zip(names, row)})
    return recs


def class_columns(names: tuple[str, ...] | list[str]) -> list[str]:
    """The table columns of typed nuclei (as ``histosam segment`` writes them): ``class``, then ``prob_<name>``
    for every class, background included; none without classes."""
    return ["class", *(f"prob_{n}" for n in names)] if names else []
