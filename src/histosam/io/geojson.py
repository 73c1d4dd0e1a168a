"""QuPath-compatible GeoJSON: one ``detection`` Feature per nucleus, streamed to disk, written atomically.

Follows QuPath's import rules (``users-and-ecosystem.md`` §3.1): a ``FeatureCollection``; each Feature
has a UUID string ``id``, a Polygon/MultiPolygon ``geometry`` in level-0 image pixels (x, y), origin top
left, and ``properties`` = ``{"objectType": "detection", "classification": {"name", "color": [r, g, b]},
"measurements": {name: number}}`` (the v0.4+ object form; NaN/inf measurements are dropped since JSON has
no NaN). A ``.gz`` suffix (``nuclei.geojson.gz``) writes gzip, which QuPath imports directly.
Feature ids are deterministic (uuid5 of ``id_namespace`` and the object id) so re-runs give identical files.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from histosam.errors import HistosamError
from histosam.io.atomic import AtomicStreamWriter, atomic_write

__all__ = ["feature", "geometry_dicts", "GeoJSONWriter", "write_geojson", "read_geojson", "DEFAULT_CLASS"]

DEFAULT_CLASS = ("Nucleus", (0, 160, 255))
_NS = uuid.UUID("8d3f4c1e-5b7a-4d2c-9a61-0f3e2b1c7d45")


def geometry_dicts(geometries: Iterable[BaseGeometry], ndigits: int = 2) -> list[dict]:
    """GeoJSON geometry dicts of many shapely geometries, coordinates rounded to ``ndigits`` decimals.

    Polygons and MultiPolygons (image pixels (x, y)) are written from one coordinate array for all of them
    (rings as lists of ``[x, y]``, exterior first): the same JSON as shapely's ``mapping``, without building
    tuples vertex by vertex. Other geometry types go through ``mapping``.
    """
    geoms = np.asarray(list(geometries), dtype=object)
    out: list[dict] = [{} for _ in range(len(geoms))]
    kinds = shapely.get_type_id(geoms) if len(geoms) else np.zeros(0, int)
    for k in np.flatnonzero((kinds != 3) & (kinds != 6)):  # not Polygon / MultiPolygon
        geo = mapping(shapely.transform(geoms[k], lambda xy: np.round(xy, ndigits)))
        out[k] = {"type": geo["type"], "coordinates": geo["coordinates"]}
    areal = np.flatnonzero((kinds == 3) | (kinds == 6))
    parts, part_geom = shapely.get_parts(geoms[areal], return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    xy, vertex_ring = shapely.get_coordinates(rings, return_index=True)
    vertices = np.round(xy, ndigits).tolist()
    bounds = np.searchsorted(vertex_ring, np.arange(len(rings) + 1)).tolist()
    coords: list[list] = [[] for _ in parts]
    for r, p in enumerate(ring_part.tolist()):
        coords[p].append(vertices[bounds[r]:bounds[r + 1]])
    polygons: list[list] = [[] for _ in areal]
    for p, g in enumerate(part_geom.tolist()):
        polygons[g].append(coords[p])
    for g, slot in enumerate(areal.tolist()):
        if kinds[slot] == 3:
            out[slot] = {"type": "Polygon", "coordinates": polygons[g][0] if polygons[g] else []}
        else:
            out[slot] = {"type": "MultiPolygon", "coordinates": polygons[g]}
    return out


def feature(
    geometry: BaseGeometry | Mapping,
    object_id: int,
    measurements: Mapping[str, Any] | None = None,
    classification: tuple[str, tuple[int, int, int]] | None = DEFAULT_CLASS,
    *,
    object_type: str = "detection",
    id_namespace: str = "",
    ndigits: int = 2,
) -> dict:
    """One QuPath Feature dict for ``geometry`` (shapely, image pixels (x, y); or a GeoJSON geometry dict from
    :func:`geometry_dicts`, used as it is)."""
    geo = dict(geometry) if isinstance(geometry, Mapping) else geometry_dicts([geometry], ndigits)[0]
    props: dict[str, Any] = {"objectType": object_type}
    if classification is not None:
        name, color = classification
        props["classification"] = {"name": str(name), "color": [int(c) for c in color]}
    if measurements:
        meas = {}
        for k, v in measurements.items():
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                meas[str(k)] = f
        props["measurements"] = meas
    fid = str(uuid.uuid5(_NS, f"{id_namespace}:{int(object_id)}"))
    return {"type": "Feature", "id": fid, "geometry": geo, "properties": props}


class GeoJSONWriter(AtomicStreamWriter):
    """Streaming FeatureCollection writer: ``add(features)`` appends as chunks are processed; ``close()``
    finishes the file and moves it into place atomically (nothing appears at ``path`` before that, and an
    exception inside ``with`` leaves any old file untouched). Memory holds one feature at a time.
    """

    def __init__(self, path: str | os.PathLike, *, compresslevel: int = 6) -> None:
        self.path = Path(path)
        self._ctx = atomic_write(self.path, "wb")
        raw = self._ctx.__enter__()
        self._raw: IO[bytes] = raw
        self._gz = (
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0)
            if self.path.suffix == ".gz"
            else None
        )
        self._out: IO[bytes] = cast(IO[bytes], self._gz) if self._gz is not None else raw
        self._out.write(b'{"type":"FeatureCollection","features":[\n')
        self.count = 0
        self._closed = False

    def add(self, features: Iterable[Mapping]) -> None:
        for f in features:
            text = json.dumps(f, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            self._out.write((",\n" if self.count else "").encode() + text.encode("utf-8"))
            self.count += 1

    def _finish(self) -> None:
        self._out.write(b"\n]}\n")
        if self._gz is not None:
            self._gz.close()


def write_geojson(path: str | os.PathLike, features: Iterable[Mapping]) -> Path:
    """Write features as one FeatureCollection (``.gz`` suffix: gzip), atomically."""
    with GeoJSONWriter(path) as w:
        w.add(features)
    return Path(path)


def read_geojson(path: str | os.PathLike) -> list[dict]:
    """Read features from a GeoJSON file (``.gz`` too) as QuPath does: FeatureCollection, bare list of
    Features, or one Feature."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise HistosamError(f"cannot read GeoJSON {path}: {e}") from e
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return list(data.get("features", []))
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise HistosamError(f"{path} is not a GeoJSON FeatureCollection, Feature or list of Features")
