"""Boxes and regular grids with a halo, in (row, col) array coordinates.

A :class:`Box` is half-open: rows ``r0..r1-1``, cols ``c0..c1-1``. A :class:`TileGrid` cuts an image of
shape (H, W) into inner boxes of ``tile × tile`` starting at (0, 0) (the last row/column of tiles is
clipped to the image) and gives each an outer box = inner box grown by ``halo`` on every side and clipped
to the image, the same blocking micro-sam's tiled AIS uses (``sam-pathosam-internals.md`` §3.2). The inner
boxes partition the image; a pixel belongs to exactly one tile (:meth:`TileGrid.tile_of`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from histosam.postprocess.ais import ParameterError

__all__ = ["Box", "Tile", "TileGrid", "tile_starts"]


class Box(NamedTuple):
    """Half-open box ``[r0, r1) × [c0, c1)`` in (row, col) pixels."""

    r0: int
    c0: int
    r1: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.r1 - self.r0, self.c1 - self.c0)

    @property
    def size(self) -> int:
        return max(0, self.r1 - self.r0) * max(0, self.c1 - self.c0)

    @property
    def slices(self) -> tuple[slice, slice]:
        """Slices selecting the box in an array whose origin is the image origin."""
        return (slice(self.r0, self.r1), slice(self.c0, self.c1))

    def local_to(self, outer: Box) -> tuple[slice, slice]:
        """Slices selecting this box inside an array that covers ``outer``."""
        return (slice(self.r0 - outer.r0, self.r1 - outer.r0), slice(self.c0 - outer.c0, self.c1 - outer.c0))

    def grow(self, margin: int, shape: tuple[int, int]) -> Box:
        """The box grown by ``margin`` on every side, clipped to an image of ``shape``."""
        return Box(
            max(0, self.r0 - margin),
            max(0, self.c0 - margin),
            min(shape[0], self.r1 + margin),
            min(shape[1], self.c1 + margin),
        )

    def intersect(self, other: Box) -> Box | None:
        """The common box, or None when empty."""
        b = Box(max(self.r0, other.r0), max(self.c0, other.c0), min(self.r1, other.r1), min(self.c1, other.c1))
        return b if b.r1 > b.r0 and b.c1 > b.c0 else None

    def contains(self, row: int, col: int) -> bool:
        return self.r0 <= row < self.r1 and self.c0 <= col < self.c1


class Tile(NamedTuple):
    """One tile: ``index`` (raster order), grid position ``(i, j)``, ``inner`` (write) and ``outer`` (read)."""

    index: int
    i: int
    j: int
    inner: Box
    outer: Box


def _positive_int(name: str, v: object, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


class TileGrid:
    """Regular grid of ``tile``-sized inner boxes with ``halo`` context over an image of ``shape``.

    >>> g = TileGrid((1000, 700), tile=384, halo=64)
    >>> g.grid_shape, g[0].inner, g[0].outer
    ((3, 2), Box(r0=0, c0=0, r1=384, c1=384), Box(r0=0, c0=0, r1=448, c1=448))
    """

    def __init__(self, shape: tuple[int, int], tile: int, halo: int = 0) -> None:
        if len(shape) != 2:
            raise ParameterError(f"shape must be (H, W), got {shape!r}")
        self.shape = (_positive_int("H", int(shape[0])), _positive_int("W", int(shape[1])))
        self.tile = _positive_int("tile", tile)
        self.halo = _positive_int("halo", halo, minimum=0)
        self.grid_shape = (-(-self.shape[0] // self.tile), -(-self.shape[1] // self.tile))

    def __len__(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    def __getitem__(self, index: int) -> Tile:
        if not 0 <= index < len(self):
            raise IndexError(index)
        i, j = divmod(index, self.grid_shape[1])
        t = self.tile
        inner = Box(i * t, j * t, min(self.shape[0], (i + 1) * t), min(self.shape[1], (j + 1) * t))
        return Tile(index, i, j, inner, inner.grow(self.halo, self.shape))

    def __iter__(self) -> Iterator[Tile]:
        return (self[k] for k in range(len(self)))

    def tile_of(self, row: int, col: int) -> int:
        """Index of the tile whose inner box contains pixel (row, col)."""
        return (row // self.tile) * self.grid_shape[1] + col // self.tile

    def tiles_covering(self, box: Box) -> list[int]:
        """Indices (raster order) of the tiles whose inner box intersects ``box``."""
        i0, i1 = box.r0 // self.tile, (box.r1 - 1) // self.tile
        j0, j1 = box.c0 // self.tile, (box.c1 - 1) // self.tile
        n = self.grid_shape[1]
        return [i * n + j for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis: stride ``tile − overlap``, the last tile ending at ``length``."""
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))
