"""One slide as a grid of chunks: planning, per-chunk AIS and chunk results as plain records.

Frames:
- *level-0*: the slide's full-resolution pixels ``(x, y)``; polygons and centroids are written in it
  (QuPath's frame).
- *working frame*: pixels at ``target_mpp`` µm/px, ``s = target_mpp / slide_mpp`` level-0 px each.
- *region frame*: the working frame shifted to the processed region's top-left ``(rx, ry)`` (whole slide
  or ROI bounding box); the tiling engine works in it, as ``(row, col)`` arrays.

A chunk is a ``chunk x chunk`` box of the region frame (``histosam.tiling`` grid); it owns the objects
whose first pixel lies in it (the engine's ownership rule), so chunks can run in any order, in any
process, and the final merge in chunk raster order is deterministic.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import deque
from collections.abc import Iterator
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

    @property
    def scale(self) -> float:
        """Level-0 pixels per working pixel."""
        return self.target_mpp / self.slide_mpp

    @property
    def shape(self) -> tuple[int, int]:
        return (self.region[3], self.region[2])

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
        return {
            "slide_mpp": self.slide_mpp, "target_mpp": self.target_mpp, "region": list(self.region),
            "tile": self.tile, "halo": self.halo, "chunk": self.chunk, "context": self.context,
            "params": AISParams.from_dict(self.params).to_dict(),
        }


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
    ``prefetch`` ahead by a background thread. ``stats`` (a dict, updated in place) receives
    ``tiles_predicted`` and ``tiles_skipped``.
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
        schedule = [chunks[i].inner.grow(plan.context, shape).grow(r, shape) for i in indices]
        if prefetch > 0:
            order = dict.fromkeys(t for box in schedule for t in grid.tiles_covering(box))
            outers = [grid[t].outer for t in order]
            keys = [(b.r0, b.c0, b.r1 - b.r0, b.c1 - b.c0) for b in outers if tile_filter(b)]
            fetcher = Prefetcher(read_region, keys, ahead=prefetch)
            read_region = fetcher
        assembler = MapAssembler(grid, read_region, predict_maps, batch_size=plan.batch_size,
                                 tile_filter=tile_filter, schedule=schedule, cache_mb=cache_mb)
        pool = ThreadPoolExecutor(1, thread_name_prefix="histosam-post")
        pending: deque = deque()

        def post(maps, maps_box, read_box, inner, i, ctx):
            res, n_inc = postprocess_chunk(maps, maps_box, read_box, inner, shape, params, index=i, context=ctx)
            return res, n_inc, (chunk_records(plan, res) if n_inc == 0 else None)

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
            return i, (chunk_records(plan, res) if recs is None else recs)

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


def _contour(mask: np.ndarray) -> np.ndarray:
    """Outer contour of a bool mask as ``(N, 2)`` float (x, y) pixel-corner coordinates."""
    from skimage.measure import find_contours

    padded = np.pad(mask, 1)
    cs = find_contours(padded.astype(np.float32), 0.5)
    c = max(cs, key=len)
    return np.stack([c[:, 1] - 0.5, c[:, 0] - 0.5], axis=1)  # centre coords -> corner frame


def chunk_records(plan: SlidePlan, res: ChunkResult) -> list[dict]:
    """Objects of a chunk as JSON-able dicts in raster order of first pixels.

    Keys: ``first`` (region-frame row, col), ``area_px`` (working frame), ``area_um2``,
    ``perimeter_um``, ``centroid`` and ``polygon`` (level-0 ``(x, y)``, rounded to 0.01 px).
    Objects whose first pixel is outside the ROI polygon are dropped.
    """
    from shapely.geometry import Polygon

    out = []
    s = plan.scale
    rx, ry = plan.region[0], plan.region[1]
    o_r, o_c = res.offset
    for k in range(res.n):
        r0, c0, r1, c1 = (int(v) for v in res.bboxes[k])
        fr, fc = (int(v) for v in res.first_pixels[k])
        if plan.roi is not None and plan.roi.polygons:
            fx, fy = (rx + fc + 0.5) * s, (ry + fr + 0.5) * s
            if not plan.roi.mask(fx - 0.5, fy - 0.5, 1, 1)[0, 0]:
                continue
        sub = res.labels[r0 - o_r : r1 - o_r, c0 - o_c : c1 - o_c] == k + 1
        xy = _contour(sub) + [c0, r0]
        poly = Polygon(xy).simplify(0.25, preserve_topology=True)
        if poly.is_empty or poly.area == 0:
            poly = Polygon(xy)
        yy, xx = np.nonzero(sub)
        centroid = ((rx + c0 + xx.mean() + 0.5) * s, (ry + r0 + yy.mean() + 0.5) * s)
        coords = np.asarray(poly.exterior.coords)
        coords = np.round((coords + [rx, ry]) * s, 2)
        out.append({
            "first": [fr, fc],
            "area_px": int(res.areas[k]),
            "area_um2": round(float(res.areas[k]) * plan.target_mpp**2, 4),
            "perimeter_um": round(float(poly.length) * plan.target_mpp, 4),
            "centroid": [round(centroid[0], 2), round(centroid[1], 2)],
            "polygon": coords.tolist(),
        })
    return out
