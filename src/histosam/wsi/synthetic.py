"""Synthetic pyramidal tiled TIFF slides for tests and benchmarks (no real data needed).

The slide is drawn tile by tile (never a full-slide array), so 40k x 40k slides fit in little RAM:
white glass background, pink elliptical tissue patches and dark purple round "nuclei" on a jittered
lattice inside the tissue. Everything is a deterministic function of the pixel position, so any
region can be redrawn exactly with :func:`render_region` (used as ground truth in tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

BACKGROUND = np.array([242, 242, 242], np.uint8)
TISSUE = np.array([228, 160, 200], np.uint8)
NUCLEUS = np.array([80, 40, 120], np.uint8)
LATTICE = 24  # nucleus lattice spacing (level-0 px)
RADIUS = 6.0  # nucleus radius (level-0 px)


def default_patches(width: int, height: int) -> list[tuple[float, float, float, float]]:
    """Tissue ellipses ``(cx, cy, rx, ry)`` in level-0 pixels covering ~15 % of the slide."""
    return [
        (0.30 * width, 0.35 * height, 0.18 * width, 0.12 * height),
        (0.70 * width, 0.70 * height, 0.12 * width, 0.16 * height),
    ]


def _hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integer lattice coordinates."""
    h = (i.astype(np.uint64) * np.uint64(73856093)) ^ (j.astype(np.uint64) * np.uint64(19349663))
    h = h ^ np.uint64(salt * 83492791)
    h = (h * np.uint64(2654435761)) % np.uint64(2**32)
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(1274126177)) % np.uint64(2**32)
    return (h % np.uint64(10007)).astype(np.float64) / 10007.0


def _in_tissue(x: np.ndarray, y: np.ndarray, patches: Sequence[tuple[float, float, float, float]]):
    inside = np.zeros(np.broadcast(x, y).shape, bool)
    for cx, cy, rx, ry in patches:
        inside |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    return inside


def render_region(
    x0: int, y0: int, w: int, h: int, patches: Sequence[tuple[float, float, float, float]]
) -> np.ndarray:
    """Draw the level-0 region ``[x0, x0+w) x [y0, y0+h)``; returns ``h x w x 3`` uint8 RGB."""
    out = np.empty((h, w, 3), np.uint8)
    out[:] = BACKGROUND
    margin = 2 * LATTICE
    if not any(x0 < cx + rx + margin and cx - rx - margin < x0 + w and y0 < cy + ry + margin
               and cy - ry - margin < y0 + h for cx, cy, rx, ry in patches):
        return out  # far from every tissue patch
    ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float64)
    tissue = _in_tissue(xs + 0.5, ys + 0.5, patches)
    if not tissue.any():
        return out
    out[tissue] = TISSUE
    # nuclei: one candidate per lattice cell, jittered, kept when its centre lies in tissue
    i0, i1 = int((x0 - 2 * LATTICE) // LATTICE), int((x0 + w + 2 * LATTICE) // LATTICE)
    j0, j1 = int((y0 - 2 * LATTICE) // LATTICE), int((y0 + h + 2 * LATTICE) // LATTICE)
    jj, ii = np.mgrid[j0 : j1 + 1, i0 : i1 + 1]
    cx = (ii + 0.2 + 0.6 * _hash01(ii, jj, 1)) * LATTICE
    cy = (jj + 0.2 + 0.6 * _hash01(ii, jj, 2)) * LATTICE
    keep = _in_tissue(cx, cy, patches) & (_hash01(ii, jj, 3) < 0.7)
    nuc = np.zeros((h, w), bool)
    r = int(np.ceil(RADIUS)) + 1
    for px, py in zip(cx[keep], cy[keep]):
        ra, rb = max(int(py) - r, y0), min(int(py) + r + 1, y0 + h)
        ca, cb = max(int(px) - r, x0), min(int(px) + r + 1, x0 + w)
        if ra >= rb or ca >= cb:
            continue
        yy, xx = np.mgrid[ra:rb, ca:cb]
        nuc[ra - y0 : rb - y0, ca - x0 : cb - x0] |= (xx + 0.5 - px) ** 2 + (yy + 0.5 - py) ** 2 <= RADIUS**2
    out[nuc] = NUCLEUS
    return out


def write_synthetic_slide(
    path: str | os.PathLike,
    width: int = 4096,
    height: int = 4096,
    mpp: float | None = 0.5,
    levels: int = 3,
    tile: int = 256,
    patches: Sequence[tuple[float, float, float, float]] | None = None,
    compression: str | None = "zlib",
) -> Path:
    """Write a pyramidal tiled RGB TIFF (level k has downsample 2**k), tile by tile.

    ``mpp`` is stored in the resolution tags (pixels per centimetre); ``None`` writes no
    resolution unit, i.e. a slide with missing mpp. Returns the path.
    """
    import tifffile

    path = Path(path)
    patches = list(default_patches(width, height) if patches is None else patches)

    def tiles(level: int) -> Iterator[np.ndarray]:
        ds = 2**level
        lw, lh = -(-width // ds), -(-height // ds)
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                full = render_region(tx * ds, ty * ds, tile * ds, tile * ds, patches)
                if ds > 1:  # box filter of the level-0 rendering
                    full = full.reshape(tile, ds, tile, ds, 3).mean(axis=(1, 3)).round().astype(np.uint8)
                yield full

    tmp = path.with_name(path.name + ".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tif:
        for level in range(levels):
            ds = 2**level
            lw, lh = -(-width // ds), -(-height // ds)
            kwargs: dict = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * ds)
                kwargs = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            else:
                kwargs = {"resolutionunit": "NONE"}
            tif.write(
                tiles(level),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if level else 0,
                metadata=None,
                **kwargs,
            )
    os.replace(tmp, path)
    return path
