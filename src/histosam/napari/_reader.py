"""napari reader: whole slides (SVS, OME-TIFF, tiled / pyramidal TIFF, NDPI, MRXS, ...) through histosam's slide
reader (:func:`histosam.wsi.reader.open_slide`) as a lazy multiscale RGB image: one dask array per pyramid level,
read tile by tile as napari shows it (nothing is read when the layer opens)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: chunk side of the lazy levels (level pixels)
CHUNK = 1024
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff")


class SlideLevel:
    """One pyramid level as an array-like ``H×W×3 uint8`` (``shape``, ``dtype``, ``ndim``, 2-D slicing), read
    through the slide reader under a lock (backends are not thread-safe; dask reads chunks from threads)."""

    def __init__(self, reader: Any, level: int, lock: threading.Lock) -> None:
        self.reader, self.level, self._lock = reader, level, lock
        w, h = reader.level_dimensions[level]
        self.shape = (int(h), int(w), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        index = index + (slice(None),) * (3 - len(index))
        rows, cols, chans = index
        r0, r1 = _span(rows, self.shape[0])
        c0, c1 = _span(cols, self.shape[1])
        if r1 <= r0 or c1 <= c0:
            return np.zeros((max(r1 - r0, 0), max(c1 - c0, 0), 3), np.uint8)[:, :, chans]
        ds = self.reader.level_downsamples[self.level]
        # level-0 corner: ceil keeps floor(x0 / ds) == c0 exactly whatever the downsample
        x0, y0 = int(np.ceil(c0 * ds - 1e-9)), int(np.ceil(r0 * ds - 1e-9))
        with self._lock:
            block = self.reader.read_region(x0, y0, c1 - c0, r1 - r0, self.level)
        out = block[:, :, chans]
        if not isinstance(rows, slice):
            out = out[0]
        if not isinstance(cols, slice):
            out = out[:, 0] if isinstance(rows, slice) else out[0]
        return out


def _span(index: Any, n: int) -> tuple[int, int]:
    """(start, stop) of an int or a step-1 slice along an axis of length ``n``."""
    if isinstance(index, slice):
        start, stop, step = index.indices(n)
        if step != 1:
            raise IndexError("slide levels are sliced with step 1")
        return start, max(stop, start)
    i = int(index) + (n if int(index) < 0 else 0)
    return i, i + 1


def slide_levels(reader: Any, chunk: int = CHUNK) -> list:
    """The slide's levels as dask arrays (level 0 first), sharing one lock."""
    import dask.array as da

    lock = threading.Lock()
    return [da.from_array(SlideLevel(reader, k, lock), chunks=(chunk, chunk, 3), asarray=True, fancy=False,
                          name=f"histosam-slide-{id(reader)}-{k}")
            for k in range(reader.level_count)]


def _is_slide_tiff(path: Path) -> bool:
    """A TIFF worth the slide reader: tiled, pyramidal, or an OME-TIFF (plain TIFFs are left to napari)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return bool(tif.is_ome or series.levels and len(series.levels) > 1 or tif.pages[0].is_tiled
                        or tif.is_svs)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: not ours
        return False


def get_reader(path: str | os.PathLike | list) -> Callable | None:
    """napari's reader hook: a reader for slide files, None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    name = p.name.lower()
    if not p.is_file():
        return None
    if name.endswith(SLIDE_SUFFIXES) or (name.endswith(TIFF_SUFFIXES) and _is_slide_tiff(p)):
        return read_slide
    return None


def read_slide(path: str | os.PathLike | list, mpp: float | None = None) -> list[tuple]:
    """``[(levels, metadata, "image")]``: the slide as a lazy multiscale RGB layer, ``metadata["mpp"]`` its level-0
    µm/px (the widgets segment at the model's resolution from it)."""
    from histosam.wsi.reader import open_slide

    if isinstance(path, list):
        path = path[0]
    reader = open_slide(path, mpp=mpp)
    levels = slide_levels(reader)
    meta = {"mpp": reader.mpp, "mpp_source": reader.mpp_source, "histosam_slide": str(reader.path),
            "backend": reader.backend, "level_downsamples": list(reader.level_downsamples)}
    kwargs = {"name": Path(path).name, "rgb": True, "multiscale": len(levels) > 1, "metadata": meta,
              "contrast_limits": [0, 255]}
    return [(levels if len(levels) > 1 else levels[0], kwargs, "image")]
