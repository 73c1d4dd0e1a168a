"""Output files of one segmented image: names, the label sink, completeness (resume) and the frame mapping.

Per input ``<stem>`` in the output folder:

- ``<stem>_labels.tif`` (uint32 tiled zlib TIFF) or, above :data:`LARGE_PIXELS`, ``<stem>_labels.ome.zarr``;
- ``<stem>.geojson`` or ``<stem>.geojson.gz`` (QuPath FeatureCollection, one ``detection`` per nucleus);
- ``<stem>_nuclei.csv`` and ``<stem>_nuclei.parquet`` (one row per nucleus, ``id`` = label value);
- ``<stem>_provenance.json``, written **last**: its presence, with every output it lists, marks a complete set.

Every file is written atomically (temp file + ``os.replace``), so a crash leaves either the old file or none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from histosam.io.labels import ZarrLabelWriter, write_labels_tiff

__all__ = ["LARGE_PIXELS", "output_names", "read_outputs", "is_complete", "LabelSink", "source_index",
           "image_stem", "crop_to_original"]

#: images with more pixels than this get OME-Zarr labels instead of a TIFF
LARGE_PIXELS = 50_000_000


def output_names(path: str | os.PathLike, out_dir: str | os.PathLike, *, shape: tuple[int, int] | None = None,
                 geojson_gz: bool = False, write_parquet: bool = True) -> dict[str, Path]:
    """Output paths for input ``path`` (``shape`` = (H, W) picks TIFF vs OME-Zarr labels; ``None``: TIFF)."""
    out = Path(out_dir)
    stem = image_stem(path)
    large = shape is not None and shape[0] * shape[1] > LARGE_PIXELS
    names = {
        "labels": out / (f"{stem}_labels.ome.zarr" if large else f"{stem}_labels.tif"),
        "geojson": out / (f"{stem}.geojson.gz" if geojson_gz else f"{stem}.geojson"),
        "csv": out / f"{stem}_nuclei.csv",
    }
    if write_parquet:
        names["parquet"] = out / f"{stem}_nuclei.parquet"
    names["provenance"] = out / f"{stem}_provenance.json"
    return names


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``a.ome.tif`` -> ``a``, ``b.png`` -> ``b``)."""
    path = Path(path)
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_outputs(path: str | os.PathLike, out_dir: str | os.PathLike, *, geojson_gz: bool = False,
                 write_parquet: bool = True) -> dict[str, Path] | None:
    """The finished output set for ``path``, or ``None`` when it is not complete.

    Complete = the provenance file exists and is valid JSON, and every output it lists exists, including
    the requested GeoJSON flavour (and the Parquet table when requested).
    """
    names = output_names(path, out_dir, geojson_gz=geojson_gz, write_parquet=write_parquet)
    prov = names["provenance"]
    if not prov.is_file():
        return None
    try:
        outputs = json.loads(prov.read_text(encoding="utf-8")).get("outputs", {})
        found = {str(k): Path(out_dir) / Path(v).name for k, v in outputs.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    wanted = {k: names[k].name for k in ("geojson", "csv", "parquet") if k in names}
    if "labels" not in found or any(found.get(k, Path()).name != v for k, v in wanted.items()):
        return None
    if not all(p.exists() for p in found.values()):
        return None
    return {**found, "provenance": prov}


def is_complete(path: str | os.PathLike, out_dir: str | os.PathLike, *, geojson_gz: bool = False,
                write_parquet: bool = True) -> bool:
    """Whether a finished output set for ``path`` exists in ``out_dir`` (see :func:`read_outputs`)."""
    return read_outputs(path, out_dir, geojson_gz=geojson_gz, write_parquet=write_parquet) is not None


class LabelSink:
    """Collects label crops (uint32, ids already global) into the label output; atomic on :meth:`close`.

    Up to :data:`LARGE_PIXELS` the labels are kept in one ``H×W`` uint32 array and written as a TIFF at the
    end; above, crops go straight into an OME-Zarr store (memory bounded by the crops).
    """

    def __init__(self, path: Path, shape: tuple[int, int], mpp: float | None = None) -> None:
        self.path = path
        self.shape = shape
        self.mpp = mpp
        self._zarr = ZarrLabelWriter(path, shape, mpp=mpp) if path.name.endswith(".zarr") else None
        self._array = None if self._zarr is not None else np.zeros(shape, np.uint32)

    def write(self, row0: int, col0: int, crop: np.ndarray) -> None:
        """Paste the non-zero pixels of ``crop`` (uint32 h×w) with its ``[0, 0]`` at image (row0, col0)."""
        if crop.size == 0:
            return
        if self._zarr is not None:
            self._zarr.write(row0, col0, crop)
            return
        h, w = crop.shape
        view = self._array[row0: row0 + h, col0: col0 + w]
        m = crop > 0
        view[m] = crop[m]

    def close(self) -> Path:
        if self._zarr is not None:
            return self._zarr.close()
        return write_labels_tiff(self.path, self._array, mpp=self.mpp)

    def abort(self) -> None:
        if self._zarr is not None:
            self._zarr.abort()
        self._array = None


def source_index(n_out: int, n_in: int) -> np.ndarray:
    """For each of ``n_out`` output pixels along one axis, the nearest-centre pixel of an ``n_in`` grid
    (the same mapping ``histosam.segment`` uses to bring labels back from the model's resolution)."""
    return np.minimum((np.arange(n_out) + 0.5) * n_in / n_out, n_in - 1).astype(int)


def crop_to_original(labels: np.ndarray, offset: tuple[int, int], scores: np.ndarray, rows: np.ndarray,
                     cols: np.ndarray) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Map a working-frame label crop (local ids 1..n, ``[0, 0]`` at working (row, col) ``offset``) to the
    original image grid given by ``rows``/``cols`` (:func:`source_index`, original -> working).

    Returns ``(crop, offset, scores)`` in the original frame with ids compacted to 1..m (objects that vanish
    when downsampled are dropped together with their score); ``crop`` is empty (0×0) when m = 0.
    """
    h, w = labels.shape
    r_sel = np.flatnonzero((rows >= offset[0]) & (rows < offset[0] + h))
    c_sel = np.flatnonzero((cols >= offset[1]) & (cols < offset[1] + w))
    if r_sel.size == 0 or c_sel.size == 0:
        return np.zeros((0, 0), np.uint32), (0, 0), np.zeros(0, np.float32)
    crop = labels[(rows[r_sel] - offset[0])[:, None], (cols[c_sel] - offset[1])[None, :]]
    present = np.unique(crop)
    present = present[present > 0]
    lut = np.zeros(labels.max(initial=0) + 1, np.uint32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint32)
    new_scores = np.asarray(scores, np.float32)[present - 1] if present.size else np.zeros(0, np.float32)
    if present.size == 0:
        return np.zeros((0, 0), np.uint32), (0, 0), new_scores
    return lut[crop], (int(r_sel[0]), int(c_sel[0])), new_scores
