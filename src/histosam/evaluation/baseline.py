"""Classical nucleus segmentation baseline (no learning), in the spirit of QuPath's cell detection.

Pipeline on an ``H×W×3 uint8 RGB`` H&E image:

1. hematoxylin channel by colour deconvolution (``skimage.color.rgb2hed``, Ruifrok & Johnston);
2. Gaussian smoothing (sigma in µm);
3. Otsu threshold (scaled by ``threshold_scale``), hole filling and a small opening;
4. seeds = peaks of the smoothed Euclidean distance transform, at least ``peak_distance_um`` apart;
5. marker watershed on the negative distance inside the foreground;
6. objects smaller than ``min_area_um2`` removed, ids renumbered 1..N (uint32).

Lengths are given in µm and converted with ``pixel_size_um``, so the defaults work at any resolution.
Defaults were tuned on MoNuSeg train images (40×, 0.25 µm/px), see ``benchmarks/baseline_monuseg.md``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from histosam.errors import ImageError


def hematoxylin(image: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density (float64 H×W) of an RGB uint8 image."""
    from skimage.color import rgb2hed

    return rgb2hed(image)[..., 0]


def classical_nuclei(
    image: np.ndarray,
    pixel_size_um: float = 0.25,
    *,
    sigma_um: float = 0.5,
    threshold_scale: float = 1.0,
    peak_distance_um: float = 2.0,
    distance_sigma_um: float = 0.5,
    min_area_um2: float = 8.0,
    max_area_um2: float | None = 200.0,
) -> np.ndarray:
    """Segment nuclei; returns uint32 labels H×W (0 background, 1..N).

    ``image``: H×W×3 uint8 RGB. The foreground threshold is ``median + threshold_scale·(otsu − median)``
    of the smoothed hematoxylin density, so ``threshold_scale`` < 1 gives more foreground. Objects
    outside ``[min_area_um2, max_area_um2]`` are removed (``max_area_um2=None`` keeps large ones).
    """
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk
    from skimage.segmentation import relabel_sequential, watershed

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"classical_nuclei needs an H×W×3 uint8 RGB image, got {image.dtype} {image.shape}")
    if pixel_size_um <= 0:
        raise ImageError(f"pixel_size_um must be positive, got {pixel_size_um}")
    px = float(pixel_size_um)
    h = gaussian(hematoxylin(image), sigma=max(sigma_um / px, 0.0), preserve_range=True)
    if np.ptp(h) < 1e-6:
        return np.zeros(image.shape[:2], np.uint32)
    med = float(np.median(h))
    fg = h > med + threshold_scale * (threshold_otsu(h) - med)
    fg = ndi.binary_fill_holes(ndi.binary_opening(fg, structure=disk(max(1, int(round(0.5 / px))))))
    dist = ndi.distance_transform_edt(fg)
    if distance_sigma_um > 0:
        dist = ndi.gaussian_filter(dist, distance_sigma_um / px)
    min_dist = max(1, int(round(peak_distance_um / px)))
    comps, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=min_dist, labels=comps, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a peak (tiny or flat) still get one seed
    missing = np.setdiff1d(np.unique(comps[fg]), np.unique(comps[tuple(peaks.T)]) if len(peaks) else [])
    if missing.size:
        centres = ndi.maximum_position(dist, comps, missing)
        for k, (r, c) in enumerate(centres, start=len(peaks) + 1):
            markers[r, c] = k
    labels = watershed(-dist, markers, mask=fg)
    areas = np.bincount(labels.ravel())
    too_small = areas < min_area_um2 / px**2
    if max_area_um2 is not None:
        too_small |= areas > max_area_um2 / px**2
    too_small[0] = False
    labels[too_small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.uint32)
