"""Final outputs of one slide, streamed from the chunk store in chunk raster order.

Files (``<stem>`` = slide file name without extension), all written to a temp file then
``os.replace``-d, so a crash never leaves a half-written output:

- ``<stem>.geojson.gz``: QuPath GeoJSON FeatureCollection, one ``detection`` per nucleus,
  outlines in level-0 pixels ``(x, y)``, ``measurements`` = the table's columns (``histosam id`` = ``id``);
  typed nuclei (a class head) carry ``classification: {"name", "color": [r, g, b]}`` (QuPath >= 0.4) and
  ``class probability <name>`` measurements, as ``histosam segment`` writes them;
- ``<stem>.parquet`` (and ``<stem>.csv`` when asked): one row per nucleus, the columns of ``histosam segment``'s
  table (:func:`histosam.measure.table_columns`, same names, units and meaning; :mod:`histosam.measure`), with
  typed nuclei ``class`` and ``prob_<name>`` per class (the image table's names), then ``chunk``;
- ``<stem>_overlay.png``: slide thumbnail with the nuclei drawn on it (filled with their class colour);
- ``<stem>_tissue.png``: the tissue mask (written by the pipeline);
- ``<stem>.provenance.json``: inputs, parameters, versions, counts, timings.

Object ids are ``1..N`` in (chunk raster order, first pixel raster order): independent of workers.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path

import numpy as np

from histosam.io.atomic import atomic_path, atomic_write
from histosam.io.geojson import GeoJSONWriter, feature
from histosam.measure.features import table_columns
from histosam.wsi.chunks import class_columns

#: the image table's columns (an RGB image, scores and µm/px are always there for slides), then ``chunk``
COLUMNS = [*table_columns(image=True, scores=True, mpp=True), "chunk"]
_VALUES = [c for c in COLUMNS if c not in ("id", "chunk")]  # the measurement keys of a chunk record


def _overlay_colors(color) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(fill, outline) of a nucleus of class colour ``color`` on the overlay: the colour, and a darker shade."""
    fill = tuple(int(v) for v in color)
    return fill, tuple(int(v * 0.6) for v in fill)


def atomic_json(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, default=str))
    return Path(path)


class SlideOutputWriter:
    """Streams objects to GeoJSON.gz, Parquet, optional CSV and an overlay thumbnail.

    Args:
        outdir, stem: output folder and file stem.
        thumb: ``H x W x 3 uint8`` thumbnail for the overlay (or ``None``), at ``thumb_scale``
            level-0 pixels per thumbnail pixel.
        csv_table: also write ``<stem>.csv``.
        class_names, class_colors: a class head's names (background first) and an RGB colour each: records then
            carry ``class`` and ``prob_<name>`` (:func:`histosam.wsi.chunks.chunk_records`); empty: one class,
            ``classification``.
    """

    def __init__(self, outdir: str | os.PathLike, stem: str, thumb: np.ndarray | None = None,
                 thumb_scale: float = 1.0, csv_table: bool = False, classification: str = "Nucleus",
                 class_names: tuple[str, ...] | list[str] = (), class_colors: list | None = None) -> None:
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
        if thumb is None:
            del self.paths["overlay"]
        self._stack = contextlib.ExitStack()
        self._tmps = {k: self._stack.enter_context(atomic_path(p)) for k, p in self.paths.items()
                      if k != "geojson"}
        self._gj = GeoJSONWriter(self.paths["geojson"])
        self.class_names = tuple(class_names)
        colors = list(class_colors or [])
        if self.class_names and len(colors) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(colors)} colours")
        self.class_colors = [tuple(int(v) for v in c) for c in colors]
        #: nuclei per class name (nucleus classes only, every one listed)
        self.class_counts: dict[str, int] = {n: 0 for n in self.class_names[1:]}
        self._prob_cols = class_columns(self.class_names)[1:]
        self.columns = [*COLUMNS[:-1], *class_columns(self.class_names), "chunk"]
        self._schema = pa.schema([(c, pa.int64() if c in ("id", "chunk") else pa.string() if c == "class"
                                   else pa.float64()) for c in self.columns])
        self._pa = pa
        self._pq = pq.ParquetWriter(self._tmps["parquet"], self._schema, compression="zstd")
        self._csv_f = None
        if csv_table:
            self._csv_f = open(self._tmps["csv"], "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._csv_f)
            self._csv.writerow(self.columns)
        self._img = Image.fromarray(thumb) if thumb is not None else None
        self._draw = ImageDraw.Draw(self._img) if self._img is not None else None
        self._scale = thumb_scale
        self._class = (classification, (200, 0, 200))
        self._fills = {name: _overlay_colors(c) for name, c in zip(self.class_names, self.class_colors)}
        self.n = 0

    def add_chunk(self, chunk: int, records: list[dict]) -> None:
        """Append one chunk's records (:func:`histosam.wsi.chunks.chunk_records`, in first-pixel raster order)."""
        rows: dict[str, list] = {c: [] for c in self.columns}
        feats = []
        names = self.class_names
        fill, outline = (40, 200, 40), (0, 120, 0)
        for rec in records:
            self.n += 1
            oid = self.n
            values = [rec[c] for c in _VALUES]
            meas = {"histosam id": oid, **dict(zip(_VALUES, values))}
            cls = self._class
            typed: list = []
            if names:
                name = rec["class"]
                probs = [rec[c] for c in self._prob_cols]
                cls = (name, self.class_colors[names.index(name)])
                meas.update({f"class probability {n}": v for n, v in zip(names, probs)})
                typed = [name, *probs]
                self.class_counts[name] = self.class_counts.get(name, 0) + 1
                fill, outline = self._fills[name]
            feats.append(feature(rec["geometry"], oid, meas, cls, id_namespace=self.stem))
            vals = [oid, *values, *typed, chunk]
            for c, v in zip(self.columns, vals):
                rows[c].append(v)
            if self._csv_f is not None:
                self._csv.writerow(vals)
            if self._draw is not None:
                geom = rec["geometry"]
                polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
                for poly in polys:
                    pts = [(x / self._scale, y / self._scale) for x, y in poly[0]]
                    self._draw.polygon(pts, fill=fill, outline=outline)
        self._gj.add(feats)
        if records:
            self._pq.write_table(self._pa.table(rows, schema=self._schema))

    def close(self) -> dict[str, Path]:
        """Finish all files and move them into place; returns their paths."""
        self._gj.close()
        self._pq.close()
        if self._csv_f is not None:
            self._csv_f.close()
        if self._img is not None:
            self._img.save(self._tmps["overlay"], format="PNG")
        self._stack.close()
        return dict(self.paths)

    def abort(self) -> None:
        """Drop the temp files (after an error)."""
        self._gj.abort()
        for f in (self._csv_f,):
            with contextlib.suppress(Exception):
                if f is not None:
                    f.close()
        with contextlib.suppress(Exception):
            self._pq.close()
        err = RuntimeError("aborted")
        with contextlib.suppress(RuntimeError):
            self._stack.__exit__(RuntimeError, err, None)
