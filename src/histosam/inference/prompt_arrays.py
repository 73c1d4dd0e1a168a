"""Prompt arrays as :class:`~histosam.inference.predictor.Predictor` takes them, normalised to batches: points
``B×N×2`` float32 (x, y), labels ``B×N`` int64 (1 foreground, 0 background, −1 ignored), boxes ``B×4`` float32
``[x0, y0, x1, y1]``, masks ``B×1×h×w`` float32 logits; a single prompt set may omit the batch axis and sets of
size 1 are repeated to the batch."""

from __future__ import annotations

import numpy as np

from histosam.errors import HistosamError

__all__ = ["batched", "batch_prompts", "prompt_xy"]


def batched(value, dtype, name: str, item: tuple[int | str, ...]) -> np.ndarray:
    """``value`` as a ``dtype`` array with a leading batch axis: shape ``item`` gains one, ``(B, *item)``
    is kept. ``item`` entries are fixed sizes (int) or free sizes (str, a name for the error message)."""
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == len(item):
        arr = arr[None]
    if arr.ndim != len(item) + 1 or any(
        isinstance(want, int) and got != want for got, want in zip(arr.shape[1:], item)
    ):
        dims = ", ".join(map(str, item))
        one = f"({dims},)" if len(item) == 1 else f"({dims})"
        raise HistosamError(f"{name} must have shape {one} or (B, {dims}), got {np.shape(value)}")
    return arr


def batch_prompts(points, labels, box, mask_input):
    """Normalise prompt arrays to batched numpy arrays; returns (points, labels, boxes, masks, B)."""
    pts = lbl = boxes = masks = None
    sizes = []
    if points is not None:
        pts = batched(points, np.float32, "points", ("N", 2))
        lbl = np.ones(pts.shape[:2], dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if lbl.ndim == 1:
            lbl = lbl[None]
        if lbl.shape != pts.shape[:2]:
            raise HistosamError(f"labels shape {lbl.shape} does not match points {pts.shape[:2]}")
        sizes.append(pts.shape[0])
    if box is not None:
        boxes = batched(box, np.float32, "box", (4,))
        sizes.append(boxes.shape[0])
    if mask_input is not None:
        masks = batched(mask_input, np.float32, "mask_input", (1, "h", "w"))
        sizes.append(masks.shape[0])
    if not sizes:
        raise HistosamError("give at least one prompt: points, a box or a mask")
    b = max(sizes)
    if any(s not in (1, b) for s in sizes):
        raise HistosamError(f"prompt batch sizes differ: {sizes}")
    if pts is not None and pts.shape[0] != b:
        pts, lbl = np.repeat(pts, b, 0), np.repeat(lbl, b, 0)
    if boxes is not None and boxes.shape[0] != b:
        boxes = np.repeat(boxes, b, 0)
    if masks is not None and masks.shape[0] != b:
        masks = np.repeat(masks, b, 0)
    return pts, lbl, boxes, masks, b


def prompt_xy(pts, lbl, boxes, i: int) -> np.ndarray | None:
    """Row ``i``'s prompt coordinates ``(K, 2)`` (x, y): its points (not the ignored ones, label −1) and box
    corners; None when it has neither."""
    coords = []
    if pts is not None:
        coords.append(pts[i][lbl[i] != -1])
    if boxes is not None:
        coords.append(boxes[i].reshape(2, 2))
    xy = np.concatenate(coords, axis=0) if coords else np.zeros((0, 2), np.float32)
    return xy if len(xy) else None
