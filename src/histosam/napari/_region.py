"""Which pixels the widgets work on: the whole image, the visible field, or a drawn ROI (napari duck-typed, no Qt).

A *box* is ``(r0, c0, r1, c1)`` in the image layer's data pixels (for a multiscale layer: its level 0, i.e. a
slide's level-0 pixels). Regions larger than :data:`MAX_REGION_PX` are refused (zoom in, draw a smaller ROI, or use
``histosam slide`` for whole slides).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histosam.errors import HistosamError

#: largest region (level-0 / data pixels) the widgets read into memory at once (64 Mpx, ~200 MB of RGB)
MAX_REGION_PX = 2**26

Box = tuple[int, int, int, int]


def level0(layer: Any) -> Any:
    """The full-resolution array of an image layer (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def image_shape(layer: Any) -> tuple[int, int]:
    """(H, W) of the layer's full-resolution data (RGB or grayscale)."""
    data = level0(layer)
    rgb = bool(getattr(layer, "rgb", False))
    shape = tuple(data.shape)
    return (int(shape[-3]), int(shape[-2])) if rgb else (int(shape[-2]), int(shape[-1]))


def layer_mpp(layer: Any) -> float | None:
    """µm/px of the layer's data pixels when it states one (``metadata["mpp"]``: the sample data and the slide
    reader set it)."""
    mpp = (getattr(layer, "metadata", None) or {}).get("mpp")
    try:
        return float(mpp) if mpp else None
    except (TypeError, ValueError):
        return None


def clip_box(box: Box, shape: tuple[int, int]) -> Box:
    r0, c0, r1, c1 = box
    h, w = shape
    r0, r1 = int(np.clip(r0, 0, h)), int(np.clip(r1, 0, h))
    c0, c1 = int(np.clip(c0, 0, w)), int(np.clip(c1, 0, w))
    if r1 <= r0 or c1 <= c0:
        raise HistosamError("the region holds no image pixels (is the image in view?)")
    return r0, c0, r1, c1


def whole_box(layer: Any) -> Box:
    h, w = image_shape(layer)
    return 0, 0, h, w


def visible_box(viewer: Any, layer: Any) -> Box:
    """The part of ``layer`` shown on the canvas (camera centre, zoom and canvas size → data pixels)."""
    size = np.asarray(viewer.canvas.size, float)  # (height, width) canvas pixels
    zoom = float(viewer.camera.zoom)  # canvas pixels per world unit
    centre = np.asarray(viewer.camera.center, float)[-2:]
    half = size / zoom / 2.0
    corners = [centre - half, centre + half]
    data = [np.asarray(layer.world_to_data(np.concatenate([np.zeros(layer.ndim - 2), c])))[-2:] for c in corners]
    lo, hi = np.minimum(*data), np.maximum(*data)
    box = (int(np.floor(lo[0])), int(np.floor(lo[1])), int(np.ceil(hi[0])), int(np.ceil(hi[1])))
    return clip_box(box, image_shape(layer))


def shapes_box(shapes_layer: Any, image_layer: Any) -> Box:
    """The bounding box of the last shape drawn in a Shapes layer, in the image layer's data pixels."""
    if shapes_layer is None or not len(shapes_layer.data):
        raise HistosamError("draw a rectangle (or any shape) in the ROI layer first")
    verts = np.asarray(shapes_layer.data[-1], float)
    world = [shapes_layer.data_to_world(v) for v in verts]
    data = np.array([np.asarray(image_layer.world_to_data(w))[-2:] for w in world])
    lo, hi = data.min(axis=0), data.max(axis=0)
    box = (int(np.floor(lo[0])), int(np.floor(lo[1])), int(np.ceil(hi[0])), int(np.ceil(hi[1])))
    return clip_box(box, image_shape(image_layer))


def read_box(layer: Any, box: Box, limit: int = MAX_REGION_PX) -> np.ndarray:
    """The layer's full-resolution pixels in ``box`` as a numpy array (lazy layers read only that region)."""
    r0, c0, r1, c1 = box
    if (r1 - r0) * (c1 - c0) > limit:
        raise HistosamError(f"the region is {c1 - c0}×{r1 - r0} px (at most {limit / 1e6:.0f} Mpx here): zoom in or "
                            "draw a smaller ROI (`histosam slide` segments whole slides)")
    data = level0(layer)
    if getattr(layer, "rgb", False):
        index = (*(0,) * (data.ndim - 3), slice(r0, r1), slice(c0, c1), slice(None))
    else:
        index = (*(0,) * (data.ndim - 2), slice(r0, r1), slice(c0, c1))
    out = data[index]
    if hasattr(out, "compute"):  # dask
        out = out.compute()
    return np.asarray(out)
