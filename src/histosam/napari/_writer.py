"""napari writer: a Labels layer → QuPath GeoJSON (``.geojson`` / ``.geojson.gz``) plus the measurement table
(``<name>_nuclei.csv`` beside it), through histosam's own exporters (:func:`histosam.measure.instances_to_features`:
the same outlines and columns as ``histosam segment``).

Coordinates: the layer's data pixels shifted by its ``translate`` (a region of a slide sits at its level-0 offset),
i.e. the image's own pixels / the slide's level-0 pixels, as QuPath expects. Classes: ``metadata["histosam_classes"]``
(``{id: class name}``, the widgets set it) with ``metadata["histosam_class_colors"]`` (``{name: [r, g, b]}``).
µm columns need ``metadata["mpp"]``.

Tissue regions: a layer whose metadata names its tissue classes (``metadata["histosam_tissue_classes"]``,
background first; the automatic widget's region layer with a region model) is written as QuPath **annotations**
with their classification (:func:`histosam.measure.regions.region_features`, as histosam's tissue pipeline does)
and the region table ``<name>_regions.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from histosam.errors import HistosamError

#: the class of a region the layer's metadata gives none (painted by hand)
UNCLASSIFIED_REGION = "Region"


def table_path(path: Path, kind: str = "nuclei") -> Path:
    name = path.name
    for suffix in (".geojson.gz", ".geojson", ".json"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + f"_{kind}.csv")
    return path.with_name(name + f"_{kind}.csv")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise HistosamError(f"the GeoJSON writer takes 2-D labels, got shape {labels.shape}")
    if labels.dtype.kind not in "ui":
        raise HistosamError(f"labels must be integers, got {labels.dtype}")
    if labels.min(initial=0) < 0:
        raise HistosamError("labels must not be negative")
    return labels


def regions_to_geojson(path: str | os.PathLike, labels: np.ndarray, class_names: list[str], *,
                       offset: tuple[float, float] = (0, 0), mpp: float | None = None,
                       classes: dict[int, str] | None = None, colors: dict[str, list[int]] | None = None,
                       table: bool = True) -> list[str]:
    """Write region instances ``labels`` (uint ``H×W``) as QuPath annotations classified by ``classes``
    (``{id: class name}``; an id without one, or with a name not in ``class_names``, gets
    :data:`UNCLASSIFIED_REGION`) and (``table``) the region table; returns the paths written."""
    from histosam.io.geojson import write_geojson
    from histosam.io.tables import write_table
    from histosam.measure.regions import region_features, regions_from_labels

    labels = _check_labels(labels)
    path = Path(path)
    names = [str(n) for n in class_names] or ["background"]
    colors = colors or {}
    classes = {int(k): str(v) for k, v in (classes or {}).items()}
    index = {n: k for k, n in enumerate(names) if k > 0}
    ids = np.unique(labels)
    ids = ids[ids > 0].tolist()
    if any(classes.get(i) not in index for i in ids):
        index[UNCLASSIFIED_REGION] = len(names)
        names.append(UNCLASSIFIED_REGION)
    palette = [[int(c) for c in colors.get(n, (128, 128, 128))] for n in names]
    regions = regions_from_labels(labels, {i: index[classes[i]] if classes.get(i) in index
                                           else index[UNCLASSIFIED_REGION] for i in ids},
                                  offset=(int(round(offset[0])), int(round(offset[1]))))
    feats, tab = region_features(regions, names, palette, mpp, id_namespace=path.name)
    written = [str(write_geojson(path, feats))]
    if table:
        written.append(str(write_table(table_path(path, "regions"), tab)))
    return written


def labels_to_geojson(path: str | os.PathLike, labels: np.ndarray, *, offset: tuple[float, float] = (0, 0),
                      mpp: float | None = None, classes: dict[int, str] | None = None,
                      colors: dict[str, list[int]] | None = None, table: bool = True) -> list[str]:
    """Write ``labels`` (uint ``H×W``) as QuPath detections and (``table``) the measurement table; returns the
    paths written."""
    from histosam.io.geojson import DEFAULT_CLASS, write_geojson
    from histosam.io.tables import write_table
    from histosam.measure import instances_to_features

    labels = _check_labels(labels)
    path = Path(path)
    feats, tab = instances_to_features(labels.astype(np.uint32, copy=False), mpp=mpp,
                                       offset=(int(round(offset[0])), int(round(offset[1]))),
                                       id_namespace=path.name)
    classes = {int(k): str(v) for k, v in (classes or {}).items()}
    colors = colors or {}
    if classes:
        names = []
        for f, object_id in zip(feats, tab["id"].tolist()):
            name = classes.get(int(object_id))
            names.append(name or "")
            if name:
                color = colors.get(name, list(DEFAULT_CLASS[1]))
                f["properties"]["classification"] = {"name": name, "color": [int(c) for c in color]}
        tab = tab.assign(classification=names)
    written = [str(write_geojson(path, feats))]
    if table:
        written.append(str(write_table(table_path(path), tab)))
    return written


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """napari's single-layer writer hook (Labels)."""
    metadata = meta.get("metadata") or {}
    translate = np.asarray(meta.get("translate", (0, 0)) or (0, 0), float)[-2:]
    scale = np.asarray(meta.get("scale", (1, 1)) or (1, 1), float)[-2:]
    if not np.allclose(scale, 1.0):
        raise HistosamError(f"the layer is scaled ({scale.tolist()}); the GeoJSON writer writes pixel coordinates")
    data = data[0] if isinstance(data, list) else data  # multiscale labels: level 0
    if metadata.get("histosam_tissue_classes"):
        return regions_to_geojson(path, np.asarray(data), list(metadata["histosam_tissue_classes"]),
                                  offset=(translate[0], translate[1]), mpp=metadata.get("mpp"),
                                  classes=metadata.get("histosam_classes"),
                                  colors=metadata.get("histosam_class_colors"))
    return labels_to_geojson(path, np.asarray(data), offset=(translate[0], translate[1]), mpp=metadata.get("mpp"),
                             classes=metadata.get("histosam_classes"), colors=metadata.get("histosam_class_colors"))
