"""Limits checked before work starts, so that a mistyped option or a hostile file ends in a one-line message
within seconds instead of minutes of work and gigabytes of memory.

- tiling: ``tile >= MIN_TILE``, ``chunk >= MIN_CHUNK``, ``0 <= halo < tile`` (pixels of the working frame);
- resampling: an image is never upsampled by more than :data:`MAX_UPSAMPLE` to reach the model's resolution;
- memory: :func:`check_memory` compares an estimate of a job's resident bytes with the memory available;
- pixels: :data:`MAX_IMAGE_PIXELS` caps an image read whole (``HISTOSAM_MAX_IMAGE_PIXELS`` overrides it; whole
  slides go through ``histosam slide``, which streams).
"""

from __future__ import annotations

import os

from histosam.errors import HistosamError, LimitError

__all__ = ["LimitError", "MIN_TILE", "MIN_CHUNK", "MAX_UPSAMPLE", "MAX_IMAGE_PIXELS", "check_tiling",
           "check_upsample", "max_image_pixels", "available_memory", "check_memory"]

#: smallest engine tile and chunk (px): below this the halo dominates and the work explodes (``--tile 7`` ran
#: 10 minutes at 4.9 GB on a 768² image)
MIN_TILE = 64
MIN_CHUNK = 64
#: largest upsampling to the model's resolution (``--mpp 50`` with a 0.25 µm/px model asks for 200×)
MAX_UPSAMPLE = 8.0
#: pixels of an image read whole (Pillow's decompression-bomb error threshold, 2 × 89,478,485)
MAX_IMAGE_PIXELS = 178_956_970


def check_tiling(tile: int | None, halo: int | None, chunk: int | None) -> None:
    """Raise :class:`LimitError` for a tile or chunk below the minimum or a halo outside ``[0, tile)``."""
    if tile is not None and tile < MIN_TILE:
        raise LimitError(f"tile {tile} px is below the minimum of {MIN_TILE} px (--tile)")
    if chunk is not None and chunk < MIN_CHUNK:
        raise LimitError(f"chunk {chunk} px is below the minimum of {MIN_CHUNK} px (--chunk)")
    if halo is not None and halo < 0:
        raise LimitError(f"halo must be >= 0 px, got {halo} (--halo)")
    if halo is not None and tile is not None and halo >= tile:
        raise LimitError(f"halo {halo} px must be smaller than the tile ({tile} px) (--halo, --tile)")


def check_upsample(factor: float, mpp: float | None, model_mpp: float | None) -> None:
    """Refuse resampling factors above :data:`MAX_UPSAMPLE` (the image is taken at ``mpp`` µm/px)."""
    if factor > MAX_UPSAMPLE:
        raise LimitError(f"--mpp {mpp:g} would upsample the image {factor:.0f}× to the model's {model_mpp:g} µm/px "
                         f"(at most {MAX_UPSAMPLE:g}× is allowed); check the pixel size (µm per pixel, e.g. 0.25 "
                         "at 40×, 0.5 at 20×)")


def max_image_pixels() -> int:
    """The pixel cap for images read whole (``HISTOSAM_MAX_IMAGE_PIXELS`` overrides :data:`MAX_IMAGE_PIXELS`)."""
    value = os.environ.get("HISTOSAM_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    try:
        n = int(float(value))
    except ValueError as exc:
        raise HistosamError(f"HISTOSAM_MAX_IMAGE_PIXELS must be a number of pixels, got {value!r}") from exc
    return max(1, n)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``; cgroup limit when lower), or ``None``."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for path, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),):
        try:
            with open(path, encoding="ascii") as f:
                limit = f.read().strip()
            if limit != "max":
                with open(usage, encoding="ascii") as f:
                    used = int(f.read().strip())
                avail = min(avail, max(0, int(limit) - used))
        except (OSError, ValueError):
            pass
    return avail


def check_memory(n_bytes: float, what: str, hint: str) -> None:
    """Raise :class:`LimitError` when ``n_bytes`` exceeds 90 % of :func:`available_memory`; ``what`` names the
    job, ``hint`` the option that changes its size."""
    avail = available_memory()
    if avail is not None and n_bytes > 0.9 * avail:
        raise LimitError(f"{what} needs about {n_bytes / 2**30:.1f} GiB of memory, {avail / 2**30:.1f} GiB are "
                         f"available; {hint}")
