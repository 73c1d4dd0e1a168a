"""Reading and inference stages of the chunk engine: stitched decoder maps for any box, tile by tile.

The *stitched maps* of an image are defined as in micro-sam's tiled AIS (``sam-pathosam-internals.md``
§3.2): every tile of a :class:`~histosam.tiling.grid.TileGrid` is read on its outer box (inner ± halo,
clipped), passed through ``predict_maps``, and only its inner box is kept; the inner boxes partition the
image. :class:`MapAssembler` produces any rectangle of these stitched maps while predicting each tile once
as long as it stays cached. The cache keeps only the inner part of a tile's maps and evicts tiles that no
later chunk needs (or, over ``cache_mb``, those needed furthest in the future; they are predicted again
when needed, so ``predict_maps`` must be a deterministic per-tile function: no batch-dependent
normalisation such as train-mode BatchNorm, see §0.1 of the internals note).

Callables (all arrays (row, col)):
- ``read_region(row0, col0, h, w) -> uint8 h×w×3`` RGB pixels of the image.
- ``predict_maps(tiles: uint8 B×h×w×3) -> float32 B×C×h×w``: fg, centre distance, boundary distance, then (C > 3)
  the class probabilities of a class head (background class first).
  All tiles of one call have the same shape; edge tiles (clipped outer boxes) come in their own batches.
- ``tile_filter(outer: Box) -> bool`` (optional): False means "no tissue": the tile is neither read nor
  predicted and its maps are background (fg 0, distances 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from histosam.postprocess.ais import ParameterError
from histosam.tiling.grid import Box, TileGrid

ReadRegion = Callable[[int, int, int, int], np.ndarray]
PredictMaps = Callable[[np.ndarray], np.ndarray]
TileFilter = Callable[[Box], bool]

#: decoder map values written where a tile is skipped by ``tile_filter`` (fg, cd, bd)
BACKGROUND_MAPS = (0.0, 1.0, 1.0)

__all__ = ["MapAssembler", "ReadRegion", "PredictMaps", "TileFilter", "BACKGROUND_MAPS"]


class MapAssembler:
    """Stitched decoder maps on demand, with a bounded tile cache.

    Args:
        grid: the tile grid (tile size and halo of the model's input tiles).
        read_region, predict_maps, tile_filter: see the module docstring.
        batch_size: at most this many tiles per ``predict_maps`` call.
        schedule: the map boxes that will be requested, in order (``maps_for(box, step)`` with
            ``step`` = index into it); used to evict tiles no later step needs. Optional.
        cache_mb: memory budget of the tile cache (float32 inner maps).
    """

    def __init__(
        self,
        grid: TileGrid,
        read_region: ReadRegion,
        predict_maps: PredictMaps,
        *,
        batch_size: int = 8,
        tile_filter: TileFilter | None = None,
        schedule: Sequence[Box] = (),
        cache_mb: float = 1024.0,
        channels: int = 3,
    ) -> None:
        if channels < 3:
            raise ParameterError(f"channels must be >= 3 (the AIS maps first), got {channels}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.grid = grid
        self.channels = int(channels)
        #: the value of each channel on a skipped (background) tile: the AIS maps' background, then the class
        #: probabilities of a class head (background class 1, the others 0)
        self.background = BACKGROUND_MAPS + ((1.0,) + (0.0,) * (self.channels - 4) if self.channels > 3 else ())
        self.read_region = read_region
        self.predict_maps = predict_maps
        self.batch_size = batch_size
        self.tile_filter = tile_filter
        self.cache_bytes = float(cache_mb) * 2**20
        self._cache: dict[int, np.ndarray | None] = {}  # None = skipped (background) tile
        self._uses: dict[int, list[int]] = {}
        for step, box in enumerate(schedule):
            for t in grid.tiles_covering(box):
                self._uses.setdefault(t, []).append(step)
        self.tiles_predicted = 0
        self.tiles_skipped = 0
        self.predict_calls = 0

    # -- reading + inference -------------------------------------------------------------------------
    def _read(self, outer: Box) -> np.ndarray:
        h, w = outer.shape
        tile = np.asarray(self.read_region(outer.r0, outer.c0, h, w))
        if tile.shape != (h, w, 3) or tile.dtype != np.uint8:
            raise ParameterError(
                f"read_region({outer.r0}, {outer.c0}, {h}, {w}) returned {tile.dtype} {tile.shape}, "
                f"expected uint8 {(h, w, 3)}"
            )
        return tile

    def _predict(self, indices: list[int]) -> None:
        groups: dict[tuple[int, int], list[int]] = {}
        for t in indices:
            tile = self.grid[t]
            if self.tile_filter is not None and not self.tile_filter(tile.outer):
                self._cache[t] = None
                self.tiles_skipped += 1
                continue
            groups.setdefault(tile.outer.shape, []).append(t)
        for shape, members in groups.items():
            for k in range(0, len(members), self.batch_size):
                batch = members[k : k + self.batch_size]
                images = np.stack([self._read(self.grid[t].outer) for t in batch])
                out = np.asarray(self.predict_maps(images))
                if out.shape != (len(batch), self.channels) + shape or not np.issubdtype(out.dtype, np.floating):
                    raise ParameterError(
                        f"predict_maps returned {out.dtype} {out.shape} for input {images.shape}, "
                        f"expected float {(len(batch), self.channels) + shape}"
                    )
                self.predict_calls += 1
                for b, t in enumerate(batch):
                    tile = self.grid[t]
                    self._cache[t] = np.array(
                        out[b][(slice(None),) + tile.inner.local_to(tile.outer)], dtype=np.float32
                    )
                    self.tiles_predicted += 1

    # -- assembly -------------------------------------------------------------------------------------
    def maps_for(self, box: Box, step: int | None = None) -> np.ndarray:
        """Stitched maps ``float32 C×h×w`` on ``box`` (C = ``channels``); ``step`` (index into the schedule) drives
        eviction."""
        needed = self.grid.tiles_covering(box)
        missing = [t for t in needed if t not in self._cache]
        if missing:
            self._predict(missing)
        out = np.empty((self.channels,) + box.shape, dtype=np.float32)
        for t in needed:
            inner = self.grid[t].inner
            part = inner.intersect(box)
            dst = (slice(None),) + part.local_to(box)
            maps = self._cache[t]
            if maps is None:
                for c, v in enumerate(self.background):
                    out[(c,) + dst[1:]] = v
            else:
                out[dst] = maps[(slice(None),) + part.local_to(inner)]
        if step is not None:
            self.release(step)
        return out

    def _next_use(self, t: int, step: int) -> int | None:
        uses = self._uses.get(t, ())
        for s in uses:
            if s > step:
                return s
        return None

    def release(self, step: int, keep_from_row: int | None = None) -> None:
        """Evict after ``step``: tiles no later scheduled step needs and whose inner box ends above
        ``keep_from_row`` (None: any row) go first; then, over the budget, tiles with no scheduled use,
        then those needed furthest in the future."""
        far = float("inf")
        nxt = {t: self._next_use(t, step) for t in self._cache}
        for t, s in nxt.items():
            if s is None and (keep_from_row is None or self.grid[t].inner.r1 <= keep_from_row):
                del self._cache[t]
        total = self.cached_bytes
        if total <= self.cache_bytes:
            return
        for t in sorted(self._cache, key=lambda t: -(far if nxt[t] is None else nxt[t])):
            if total <= self.cache_bytes:
                break
            m = self._cache.pop(t)
            total -= 0 if m is None else m.nbytes

    @property
    def cached_bytes(self) -> int:
        return sum(m.nbytes for m in self._cache.values() if m is not None)

    def __len__(self) -> int:
        return len(self._cache)
