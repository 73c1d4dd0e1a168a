"""Final outputs of one slide, streamed from the chunk store in chunk raster order.

Files (``<stem>`` = slide file name without extension), all written to a temp file then
``os.replace``-d, so a crash never leaves a half-written output:

- ``<stem>.geojson.gz``: QuPath GeoJSON FeatureCollection, one ``detection`` per nucleus,
  polygons in level-0 pixels ``(x, y)``, ``measurements`` in µm;
- ``<stem>.parquet`` (and ``<stem>.csv`` when asked): one row per nucleus;
- ``<stem>_overlay.png``: slide thumbnail with the nuclei drawn on it;
- ``<stem>_tissue.png``: the tissue mask (written by the pipeline);
- ``<stem>.provenance.json``: inputs, parameters, versions, counts, timings.

Object ids are ``1..N`` in (chunk raster order, first pixel raster order): independent of workers.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import uuid
from pathlib import Path

import numpy as np

COLUMNS = ["id", "chunk", "centroid_x", "centroid_y", "area_um2", "perimeter_um", "area_px"]
_NS = uuid.UUID("8f0c7a4e-6b1d-4c5e-9a57-3d2f1b0e9c11")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_json(path: str | os.PathLike, data: dict) -> Path:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


class SlideOutputWriter:
    """Streams objects to GeoJSON.gz, Parquet, optional CSV and an overlay thumbnail.

    Args:
        outdir, stem: output folder and file stem.
        thumb: ``H x W x 3 uint8`` thumbnail for the overlay (or ``None``), at ``thumb_scale``
            level-0 pixels per thumbnail pixel.
        csv_table: also write ``<stem>.csv``.
    """

    def __init__(self, outdir: str | os.PathLike, stem: str, thumb: np.ndarray | None = None,
                 thumb_scale: float = 1.0, csv_table: bool = False, classification: str = "Nucleus") -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from PIL import Image, ImageDraw

        self.outdir = Path(outdir)
        self.stem = stem
        self.paths = {
            "geojson": self.outdir / f"{stem}.geojson.gz",
            "parquet": self.outdir / f"{stem}.parquet",
            "overlay": self.outdir / f"{stem}_overlay.png",
        }
        if csv_table:
            self.paths["csv"] = self.outdir / f"{stem}.csv"
        self._tmps = {k: _tmp(p) for k, p in self.paths.items()}
        self._gz = gzip.open(self._tmps["geojson"], "wt", encoding="utf-8", compresslevel=6)
        self._gz.write('{"type": "FeatureCollection", "features": [\n')
        self._schema = pa.schema([("id", pa.int64()), ("chunk", pa.int64()), ("centroid_x", pa.float64()),
                                  ("centroid_y", pa.float64()), ("area_um2", pa.float64()),
                                  ("perimeter_um", pa.float64()), ("area_px", pa.int64())])
        self._pa = pa
        self._pq = pq.ParquetWriter(self._tmps["parquet"], self._schema, compression="zstd")
        self._csv_f = None
        if csv_table:
            self._csv_f = open(self._tmps["csv"], "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._csv_f)
            self._csv.writerow(COLUMNS)
        self._img = Image.fromarray(thumb) if thumb is not None else None
        self._draw = ImageDraw.Draw(self._img) if self._img is not None else None
        self._scale = thumb_scale
        self._class = {"name": classification, "color": [200, 0, 200]}
        self.n = 0

    def add_chunk(self, chunk: int, records: list[dict]) -> None:
        """Append one chunk's records (already in first-pixel raster order)."""
        rows = {c: [] for c in COLUMNS}
        for rec in records:
            self.n += 1
            oid = self.n
            feat = {
                "type": "Feature",
                "id": str(uuid.uuid5(_NS, f"{self.stem}:{oid}")),
                "geometry": {"type": "Polygon", "coordinates": [rec["polygon"]]},
                "properties": {
                    "objectType": "detection",
                    "classification": self._class,
                    "measurements": {"histosam id": oid, "Area µm^2": rec["area_um2"],
                                     "Perimeter µm": rec["perimeter_um"]},
                },
            }
            self._gz.write(("" if oid == 1 else ",\n") + json.dumps(feat, separators=(",", ":"),
                                                                    ensure_ascii=False))
            vals = [oid, chunk, rec["centroid"][0], rec["centroid"][1], rec["area_um2"],
                    rec["perimeter_um"], rec["area_px"]]
            for c, v in zip(COLUMNS, vals):
                rows[c].append(v)
            if self._csv_f is not None:
                self._csv.writerow(vals)
            if self._draw is not None:
                pts = [(x / self._scale, y / self._scale) for x, y in rec["polygon"]]
                self._draw.polygon(pts, fill=(40, 200, 40), outline=(0, 120, 0))
        if records:
            self._pq.write_table(self._pa.table(rows, schema=self._schema))

    def close(self) -> dict[str, Path]:
        """Finish all files and move them into place; returns their paths."""
        self._gz.write("\n]}\n")
        self._gz.close()
        self._pq.close()
        if self._csv_f is not None:
            self._csv_f.close()
        if self._img is not None:
            self._img.save(self._tmps["overlay"], format="PNG")
        else:
            self.paths.pop("overlay")
        for k, p in self.paths.items():
            os.replace(self._tmps[k], p)
        return dict(self.paths)

    def abort(self) -> None:
        """Drop the temp files (after an error)."""
        for f in (self._gz, self._csv_f):
            try:
                if f is not None:
                    f.close()
            except Exception:  # noqa: BLE001
                pass
        try:
            self._pq.close()
        except Exception:  # noqa: BLE001
            pass
        for p in self._tmps.values():
            p.unlink(missing_ok=True)
