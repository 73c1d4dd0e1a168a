"""Automatic segmentation for the widget, without napari or Qt: AIS / AMG on an image region, typed nuclei when
the model has a class head, tissue regions (:func:`histosam.tasks.tissue.segment_tissue`) when it is a region
model."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: AIS parameters the widget shows (the model's defaults pre-filled)
SHOWN_PARAMS = ("foreground_threshold", "center_distance_threshold", "boundary_distance_threshold", "min_size")


@dataclasses.dataclass
class AutomaticResult:
    """Labels of a region and, for typed nuclei, each nucleus' class.

    Attributes:
        labels: uint32 ``H×W`` (region pixels), ids 1..N.
        origin: (row, col) of the region's top-left pixel in the image layer's data pixels.
        class_names: the class head's names, background first (empty: untyped).
        classes: int64 ``(N,)`` class index of nucleus ``i + 1`` (empty when untyped).
        colors: an RGB colour per class name.
        centroids: float ``(N, 2)`` (row, col) of each nucleus in the image layer's data pixels.
    """

    labels: np.ndarray
    origin: tuple[int, int] = (0, 0)
    class_names: tuple[str, ...] = ()
    classes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    colors: list[list[int]] = dataclasses.field(default_factory=list)
    centroids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def typed(self) -> bool:
        return bool(self.class_names)

    def class_of(self) -> list[str]:
        """The class name of each nucleus (id order)."""
        return [self.class_names[int(k)] for k in self.classes]

    def class_map(self) -> np.ndarray:
        """uint8 ``H×W``: each nucleus' class index (0 = background)."""
        lut = np.zeros(len(self.classes) + 1, np.uint8)
        lut[1:] = self.classes
        return lut[self.labels]


@dataclasses.dataclass
class RegionResult:
    """Tissue regions of an image region (a region model's run).

    Attributes:
        instances: int32 ``H×W`` region instances (region pixels), ids 1..N, 0 = none.
        class_map: uint8 ``H×W`` class index (0 = background).
        origin: (row, col) of the region's top-left pixel in the image layer's data pixels.
        class_names: the tissue classes, background first.
        instance_classes: ``{id: class name}`` of every region.
        colors: an RGB colour per class (the model's ``config.tissue["colors"]``).
        polygons: ``{id: shapely geometry}``, each region's outline in the region's pixels (histosam's outline
            convention: pixel (r, c) covers [c, c+1) × [r, r+1), x = column).
    """

    instances: np.ndarray
    class_map: np.ndarray
    origin: tuple[int, int] = (0, 0)
    class_names: tuple[str, ...] = ()
    instance_classes: dict[int, str] = dataclasses.field(default_factory=dict)
    colors: list[list[int]] = dataclasses.field(default_factory=list)
    polygons: dict[int, Any] = dataclasses.field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.instances

    def counts(self) -> dict[str, int]:
        """Regions per (non-background) class."""
        names = list(self.instance_classes.values())
        return {c: names.count(c) for c in self.class_names[1:]}


def is_region_model(model: Any) -> bool:
    """Whether ``model`` has a tissue head (a region model such as histosam-tissue)."""
    return getattr(model, "tissue_decoder", None) is not None and \
        bool((getattr(model.config, "tissue", None) or {}).get("classes"))


def tissue_colors(model: Any, names: tuple[str, ...]) -> list[list[int]]:
    """The model's RGB colour per tissue class (grey where it names none)."""
    colors = list((model.config.tissue or {}).get("colors") or [])
    return [[int(c) for c in colors[k]] if k < len(colors) else [128, 128, 128] for k in range(len(names))]


def run_tissue(image: np.ndarray, model: Any, *, mpp: float | None = None,
               origin: tuple[int, int] = (0, 0)) -> RegionResult:
    """Tissue regions of ``image`` (a region whose top-left is ``origin``) with
    :func:`histosam.tasks.tissue.segment_tissue`, and their outlines."""
    from histosam.io.images import to_rgb_uint8
    from histosam.measure.polygons import label_polygons
    from histosam.tasks.tissue import segment_tissue

    rgb = to_rgb_uint8(np.asarray(image))
    res = segment_tissue(rgb, model, mpp=mpp)
    names = tuple(res.class_names)
    return RegionResult(res.instances, res.class_map, (int(origin[0]), int(origin[1])), names,
                        {int(k): str(v) for k, v in res.instance_classes.items()}, tissue_colors(model, names),
                        label_polygons(res.instances))


def default_params(model: Any) -> dict[str, float]:
    """The AIS parameters the widget shows, at the model's defaults."""
    from histosam.tasks.nuclei import split_params

    ais, _ = split_params(model, {})
    return {k: getattr(ais, k) for k in SHOWN_PARAMS}


def centroids(labels: np.ndarray, n: int | None = None) -> np.ndarray:
    """(row, col) centroid of ids 1..n (``n`` default: the largest id; absent ids get NaN)."""
    from scipy import ndimage

    n = int(labels.max(initial=0)) if n is None else n
    if n == 0:
        return np.zeros((0, 2))
    return np.asarray(ndimage.center_of_mass(np.ones(labels.shape), labels, np.arange(1, n + 1)), float)


def run_automatic(image: np.ndarray, model: Any, *, mode: str = "ais", mpp: float | None = None,
                  typed: bool | None = None, origin: tuple[int, int] = (0, 0), device: str | None = None,
                  precision: str = "auto", **params: Any) -> AutomaticResult | RegionResult:
    """Segment ``image`` (a region whose top-left is ``origin``) with ``histosam.segment`` (``mode`` "ais" or
    "amg"), or, with ``typed`` (default: when the model has a class head and ``mode`` is "ais"),
    :func:`histosam.tasks.nuclei.segment_typed_nuclei`. A region model (tissue head) gives tissue regions instead
    (:func:`run_tissue`; ``mode``, ``typed`` and the AIS parameters do not apply)."""
    if is_region_model(model):
        return run_tissue(image, model, mpp=mpp, origin=origin)
    import histosam
    from histosam.io.images import to_rgb_uint8
    from histosam.napari._models import class_colors, class_names

    rgb = to_rgb_uint8(np.asarray(image))
    names = class_names(model)
    typed = bool(names) and mode == "ais" if typed is None else typed
    dev = None if device in (None, "", "auto") else device
    if typed:
        from histosam.tasks.nuclei import segment_typed_nuclei

        res = segment_typed_nuclei(rgb, model, mpp, device=dev, precision=precision, params=params)
        labels, classes, names = res.labels, res.classes, res.class_names
        colors = class_colors(model, names)
    else:
        labels = histosam.segment(rgb, model=model, mode=mode, mpp=mpp, device=dev, precision=precision, **params)
        classes, names, colors = np.zeros(0, np.int64), (), []
    cents = centroids(labels) + np.array(origin, float)
    return AutomaticResult(labels, (int(origin[0]), int(origin[1])), tuple(names), classes, colors, cents)
