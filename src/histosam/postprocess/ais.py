"""Automatic instance segmentation (AIS) from the three decoder maps.

Re-implements micro-sam's ``InstanceSegmentationWithDecoder.generate`` post-processing
(torch-em ``watershed_from_center_and_boundary_distances``), see
``sam-pathosam-internals.md`` §3.1:

1. ``fg = gaussian(fg, foreground_smoothing)``; ``cd, bd = gaussian(·, distance_smoothing)``
   (each skipped when its sigma is 0, as in micro-sam HEAD).
2. ``fg_mask = fg > foreground_threshold``.
3. ``markers = label((cd < center_distance_threshold) & (bd < boundary_distance_threshold) & fg_mask)``
   with 8-connectivity; ids in raster order of each component's first pixel (as ``skimage.measure.label``).
4. ``seg = watershed(bd, markers, mask=fg_mask)`` with 4-connectivity (``skimage.segmentation.watershed``).
5. Size filter: ids with fewer than ``min_size`` pixels become 0, the rest are relabelled 1..N keeping order.

Smoothing: ``scipy.ndimage.gaussian_filter`` with ``truncate=GAUSSIAN_TRUNCATE`` (3σ, kernel radius
``int(3σ + 0.5)``: 3 px for σ=1, 5 px for σ=1.6) and ``mode=GAUSSIAN_MODE`` = ``"mirror"`` (``d c b | a b c d``,
the edge pixel not repeated). This is micro-sam's smoothing (bioimage-cpp ``gaussian_smoothing`` in micro-sam
>= 1.7, ``vigra.filters.gaussianSmoothing`` before it: a 3σ window, reflection without edge repetition); it
matches micro-sam 1.8's smoothed maps to ~2e-7. scipy's default (4σ, ``mode="reflect"``) differs by ~1e-4 inside
the image (the kernel's tail) and by up to ~5e-2 along the image border (the border rule), enough to move pixels
and split or merge small objects across a threshold (mSA 0.97 against micro-sam on a random vit_b PathoSAM
checkpoint with ~6,200 objects; 0.99997 with this smoothing). The
remaining difference is the watershed's tie-breaking: bioimage-cpp quantises the heights to 65,536 levels
and floods each level last-in first-out, skimage orders by exact value then first-in first-out (16 of 10⁶
pixels there; labels identical on tests/test_parity_microsam_golden.py's small case). Everything runs in
float32 (the watershed itself converts to float64 internally).

All arrays are (row, col). Maps: ``float32 3×H×W`` = (foreground prob, centre distance, boundary distance).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from histosam.errors import ParameterError

#: kernel half-width in σ and border mode of the map smoothing (micro-sam / bioimage-cpp / vigra: 3σ, mirror)
GAUSSIAN_TRUNCATE = 3.0
GAUSSIAN_MODE = "mirror"
_EIGHT = np.ones((3, 3), dtype=bool)

__all__ = [
    "AISParams",
    "ParameterError",
    "GAUSSIAN_TRUNCATE",
    "GAUSSIAN_MODE",
    "gaussian_radius",
    "smooth_maps",
    "watershed_from_smoothed",
    "watershed_from_maps",
    "size_filter",
]


@dataclasses.dataclass(frozen=True)
class AISParams:
    """Parameters of :func:`watershed_from_maps`; defaults are micro-sam's ``generate`` defaults.

    Travels with a model (``ModelConfig.postprocess`` dict) and can be overridden per run::

        params = AISParams.from_dict(model.config.postprocess).replace(min_size=50)
    """

    center_distance_threshold: float = 0.5
    boundary_distance_threshold: float = 0.5
    foreground_threshold: float = 0.5
    foreground_smoothing: float = 1.0
    distance_smoothing: float = 1.6
    min_size: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                raise ParameterError(f"AIS parameter {f.name!r} must be a number, got {v!r}")
            if not np.isfinite(v) or v < 0:
                raise ParameterError(f"AIS parameter {f.name!r} must be finite and >= 0, got {v!r}")
        if int(self.min_size) != self.min_size:
            raise ParameterError(f"AIS parameter 'min_size' must be an integer, got {self.min_size!r}")
        object.__setattr__(self, "min_size", int(self.min_size))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None, **overrides: Any) -> AISParams:
        """Build from a (possibly partial) dict; unknown keys raise :class:`ParameterError`.

        ``None`` values are ignored (they mean "use the default").
        """
        merged = {**dict(d or {}), **overrides}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ParameterError(f"unknown AIS parameter(s) {unknown}; valid: {sorted(names)}")
        return cls(**{k: v for k, v in merged.items() if v is not None})

    def to_dict(self) -> dict[str, float | int]:
        """Plain JSON-serialisable dict of all parameters."""
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> AISParams:
        """Copy with some parameters changed (validated like :meth:`from_dict`)."""
        return AISParams.from_dict(self.to_dict(), **overrides)

    @property
    def smoothing_radius(self) -> int:
        """Pixels of context the smoothing needs on each side for exact results inside a crop."""
        return max(gaussian_radius(self.foreground_smoothing), gaussian_radius(self.distance_smoothing))


def gaussian_radius(sigma: float) -> int:
    """Kernel radius (px) of ``gaussian_filter(sigma, truncate=GAUSSIAN_TRUNCATE)``; 0 when sigma is 0."""
    return int(GAUSSIAN_TRUNCATE * float(sigma) + 0.5) if sigma > 0 else 0


def _check_maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] != 3:
        raise ParameterError(f"decoder maps must have shape 3×H×W, got {maps.shape}")
    if not np.issubdtype(maps.dtype, np.floating):
        raise ParameterError(f"decoder maps must be floating point, got {maps.dtype}")
    return maps


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return np.asarray(x, dtype=np.float32)
    return ndi.gaussian_filter(x, float(sigma), output=np.float32, mode=GAUSSIAN_MODE, truncate=GAUSSIAN_TRUNCATE)


def smooth_maps(maps: np.ndarray, params: AISParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 1: smoothed ``(fg, cd, bd)``, each float32 H×W (new arrays or views of float32 input)."""
    maps = _check_maps(maps)
    fg = _smooth(maps[0], params.foreground_smoothing)
    cd = _smooth(maps[1], params.distance_smoothing)
    bd = _smooth(maps[2], params.distance_smoothing)
    return fg, cd, bd


def watershed_from_smoothed(
    fg: np.ndarray, cd: np.ndarray, bd: np.ndarray, params: AISParams
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-4 on already smoothed maps (float32 H×W each).

    Returns ``(seg, fg_mask)``: ``seg`` int32 H×W watershed labels (ids = marker ids, consecutive 1..N,
    raster order of each marker's first pixel), ``fg_mask`` bool H×W. The size filter is not applied.
    """
    fg_mask = fg > np.float32(params.foreground_threshold)
    marker_map = cd < np.float32(params.center_distance_threshold)
    marker_map &= bd < np.float32(params.boundary_distance_threshold)
    marker_map &= fg_mask
    markers, n = ndi.label(marker_map, structure=_EIGHT)
    if n == 0:
        return np.zeros(fg.shape, np.int32), fg_mask
    seg = watershed(bd, markers, mask=fg_mask, connectivity=1)
    return seg, fg_mask


def size_filter(seg: np.ndarray, min_size: int) -> np.ndarray:
    """Step 5: ids with fewer than ``min_size`` pixels -> 0, the others relabelled 1..N in id order.

    Returns a new uint32 array. With ``min_size`` 0 the ids are kept unchanged (as micro-sam does).
    Ids of ``seg`` must be >= 0.
    """
    seg = np.asarray(seg)
    n = int(seg.max(initial=0))
    if min_size <= 0 or n == 0:
        return seg.astype(np.uint32)
    counts = np.bincount(seg.ravel(), minlength=n + 1)
    keep = counts >= min_size
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lut[seg]


def watershed_from_maps(
    maps: np.ndarray,
    center_distance_threshold: float = 0.5,
    boundary_distance_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    foreground_smoothing: float = 1.0,
    distance_smoothing: float = 1.6,
    min_size: int = 0,
    *,
    params: AISParams | None = None,
) -> np.ndarray:
    """Instance labels from decoder maps, as micro-sam's AIS does (steps in the module docstring).

    Args:
        maps: float 3×H×W (foreground probability, centre distance, boundary distance), (row, col).
        params: an :class:`AISParams`; when given it overrides the keyword thresholds.

    Returns:
        uint32 H×W labels, 0 background, ids 1..N in raster order of each marker's first pixel.
    """
    if params is None:
        params = AISParams(
            center_distance_threshold=center_distance_threshold,
            boundary_distance_threshold=boundary_distance_threshold,
            foreground_threshold=foreground_threshold,
            foreground_smoothing=foreground_smoothing,
            distance_smoothing=distance_smoothing,
            min_size=min_size,
        )
    fg, cd, bd = smooth_maps(maps, params)
    seg, _ = watershed_from_smoothed(fg, cd, bd, params)
    return size_filter(seg, params.min_size)
