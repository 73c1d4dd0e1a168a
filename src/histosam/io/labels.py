"""Label images on disk: uint32 TIFF (tifffile, compressed) and OME-Zarr labels (zarr), written atomically.

Labels are ``uint32`` (row, col), 0 = background. TIFFs are tiled 512×512 with zlib (deflate) compression
so large label images stay small and can be read by region. OME-Zarr follows NGFF "image-label" layout
(``<store>/labels/<name>/0`` array, ``multiscales`` + ``image-label`` metadata); for whole slides use
:class:`ZarrLabelWriter` to write chunk results as they come.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from histosam.errors import HistosamError
from histosam.io.atomic import AtomicStreamWriter, atomic_dir, atomic_path

__all__ = ["write_labels_tiff", "read_labels", "write_labels_zarr", "ZarrLabelWriter"]


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise HistosamError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise HistosamError("labels must be >= 0")
    return labels.astype(np.uint32, copy=False)


def write_labels_tiff(
    path: str | os.PathLike, labels: np.ndarray, *, compression: str = "zlib", mpp: float | None = None
) -> Path:
    """Write uint32 labels as a tiled, compressed TIFF (atomic). ``mpp`` sets the resolution tags."""
    labels = _as_labels(labels)
    path = Path(path)
    kw = {}
    if mpp:
        kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tile = (512, 512) if min(labels.shape) >= 512 else None
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels, compression=compression, tile=tile, photometric="minisblack", **kw)
    return path


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label TIFF (any integer dtype) or an OME-Zarr label store -> uint32 H×W."""
    path = Path(path)
    if not path.exists():
        raise HistosamError(f"label file not found: {path}")
    if path.is_dir():
        import zarr

        root = zarr.open_group(str(path), mode="r")
        name = root["labels"].attrs["labels"][0]
        return np.asarray(root[f"labels/{name}/0"]).astype(np.uint32)
    try:
        arr = tifffile.imread(path)
    except Exception as e:  # tifffile raises various errors on bad files
        raise HistosamError(f"cannot read label image {path}: {e}") from e
    return _as_labels(np.squeeze(arr))


class ZarrLabelWriter(AtomicStreamWriter):
    """Streaming OME-Zarr label writer: ``write(row0, col0, crop)`` pastes non-zero pixels; ``close()``
    finalises atomically (the store appears at ``path`` only then).

    ``shape`` (H, W), ``chunks`` zarr chunk size; ``name`` the label name (``labels/<name>``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: tuple[int, int],
        *,
        chunks: int = 1024,
        name: str = "nuclei",
        mpp: float | None = None,
    ) -> None:
        import zarr

        self.path = Path(path)
        self._ctx = atomic_dir(self.path)
        self._tmp = self._ctx.__enter__()
        root = zarr.open_group(str(self._tmp), mode="w", zarr_format=2)
        scale = [mpp or 1.0, mpp or 1.0]
        root.attrs["multiscales"] = []
        labels_grp = root.create_group("labels")
        labels_grp.attrs["labels"] = [name]
        g = labels_grp.create_group(name)
        g.attrs["multiscales"] = [
            {
                "version": "0.4",
                "name": name,
                "axes": [
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            }
        ]
        g.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
        self.array = g.create_array("0", shape=tuple(shape), chunks=(chunks, chunks), dtype="uint32", fill_value=0)
        self._closed = False

    def write(self, row0: int, col0: int, crop: np.ndarray) -> None:
        crop = _as_labels(crop)
        h, w = crop.shape
        region = (slice(row0, row0 + h), slice(col0, col0 + w))
        cur = self.array[region]
        m = crop > 0
        cur[m] = crop[m]
        self.array[region] = cur


def write_labels_zarr(
    path: str | os.PathLike, labels: np.ndarray, *, chunks: int = 1024, name: str = "nuclei", mpp: float | None = None
) -> Path:
    """Write a label image as an OME-Zarr (NGFF 0.4, zarr format 2) store, atomically."""
    labels = _as_labels(labels)
    with ZarrLabelWriter(path, labels.shape, chunks=chunks, name=name, mpp=mpp) as w:
        w.array[:] = labels
    return Path(path)
