"""Tissue detection on a low-resolution thumbnail (default 8 µm/px).

Pipeline on the ``H x W x 3 uint8`` thumbnail:
1. *stain*: HSV saturation above Otsu's threshold (floored at ``min_saturation`` so that an empty
   glass slide stays empty) and optical density above ``min_od`` (not white glass);
2. *pen marks*: pixels with a blue/green hue (60°-260°, i.e. not the pink/purple of H&E) and
   black pixels (max channel < ``black_level``) are removed;
3. *morphology*: binary closing (``close_um``), small objects (< ``min_area_um2``) removed, holes
   smaller than ``max_hole_um2`` filled.

The mask is ``bool H x W`` with pixel ``(i, j)`` covering level-0 box ``[j*s, (j+1)*s) x
[i*s, (i+1)*s)``, ``s = mask_mpp / slide_mpp``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import filters, morphology

from histosam.wsi.reader import SlideReader


@dataclass
class TissueMask:
    """A tissue mask with its resolution: ``mask`` bool ``H x W`` at ``mpp`` µm/px."""

    mask: np.ndarray
    mpp: float

    @property
    def area_mm2(self) -> float:
        return float(self.mask.sum()) * (self.mpp * 1e-3) ** 2

    def fraction(self, x: float, y: float, w: float, h: float, frame_mpp: float) -> float:
        """Tissue fraction of the box ``(x, y, w, h)`` given in a frame of ``frame_mpp`` µm/px."""
        r = frame_mpp / self.mpp
        j0, i0 = int(np.floor(x * r)), int(np.floor(y * r))
        j1, i1 = int(np.ceil((x + w) * r)), int(np.ceil((y + h) * r))
        H, W = self.mask.shape
        j0, i0, j1, i1 = max(j0, 0), max(i0, 0), min(j1, W), min(i1, H)
        if j0 >= j1 or i0 >= i1:
            return 0.0
        return float(self.mask[i0:i1, j0:j1].mean())

    def save_png(self, path: str | os.PathLike) -> Path:
        """Write the mask as an 8-bit PNG (0 / 255), atomically."""
        from PIL import Image

        from histosam.io.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            Image.fromarray(self.mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        return path


def detect_tissue_rgb(
    thumb: np.ndarray,
    mpp: float,
    min_saturation: float = 0.07,
    min_od: float = 0.05,
    black_level: int = 60,
    close_um: float = 24.0,
    min_area_um2: float = 20000.0,
    max_hole_um2: float = 40000.0,
) -> np.ndarray:
    """Tissue mask of an RGB thumbnail (``H x W x 3 uint8`` at ``mpp`` µm/px) -> bool ``H x W``."""
    rgb = np.asarray(thumb)[..., :3]
    h = rgb.shape[0]
    sat = np.empty(rgb.shape[:2], np.float32)
    pen = np.empty(rgb.shape[:2], bool)
    stained = np.empty(rgb.shape[:2], bool)
    for y in range(0, h, 256):  # row strips keep the float temporaries small
        part = rgb[y : y + 256]
        hue, sat[y : y + 256] = _hue_saturation(part)
        pen[y : y + 256] = ((hue > 60) & (hue < 260) & (sat[y : y + 256] > 0.15)) | (
            part.max(axis=-1) < black_level)
        stained[y : y + 256] = _mean_od(part) > min_od
    cand = sat[~pen & stained]
    thr = min_saturation
    if cand.size > 16 and np.ptp(cand) > 1e-3:
        thr = max(thr, float(filters.threshold_otsu(sat[~pen])))
    del cand
    mask = (sat > thr) & stained & ~pen
    del sat, stained
    px_area = mpp * mpp
    r = max(1, int(round(close_um / mpp / 2)))
    padded = np.pad(mask, r, mode="edge")
    mask = ndimage.binary_closing(padded, morphology.disk(r))[r:-r, r:-r]
    mask &= ~pen
    mask = morphology.remove_small_objects(mask, max_size=max(1, int(min_area_um2 / px_area)))
    holes = ndimage.binary_fill_holes(mask) & ~mask
    small_holes = morphology.remove_small_objects(holes, max_size=max(1, int(max_hole_um2 / px_area)))
    return mask | (holes & ~small_holes)


def _hue_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV hue (degrees) and saturation as float32 (same values as ``skimage.color.rgb2hsv``)."""
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    sat = np.divide(delta, mx, out=np.zeros_like(mx), where=mx > 0)
    safe = np.where(delta > 0, delta, 1.0).astype(np.float32)
    hue = np.where(mx == r, (g - b) / safe, np.where(mx == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = ((hue / 6.0) % 1.0 * 360.0).astype(np.float32)
    hue[delta == 0] = 0.0
    return hue, sat


def _mean_od(rgb: np.ndarray) -> np.ndarray:
    """Mean optical density over the channels (float32), via a 256-entry lookup table."""
    lut = (-np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)
    return (lut[rgb[..., 0]] + lut[rgb[..., 1]] + lut[rgb[..., 2]]) / 3.0


def detect_tissue(slide: SlideReader, mpp: float = 8.0, **params) -> TissueMask:
    """Tissue mask of a slide from its thumbnail at ``mpp`` µm/px (clamped to the slide's own
    resolution); ``params`` go to :func:`detect_tissue_rgb`."""
    mpp = max(mpp, slide.mpp)
    thumb = slide.thumbnail(mpp)
    return TissueMask(detect_tissue_rgb(thumb, mpp, **params), mpp)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks; ``b`` is resized (nearest) to ``a``'s shape."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if b.shape != a.shape:
        ri = (np.arange(a.shape[0]) + 0.5) * b.shape[0] / a.shape[0]
        ci = (np.arange(a.shape[1]) + 0.5) * b.shape[1] / a.shape[1]
        b = b[np.minimum(ri.astype(int), b.shape[0] - 1)][:, np.minimum(ci.astype(int), b.shape[1] - 1)]
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
