"""A model-free ``predict_maps`` for tests and benchmarks: dark purple pixels are nuclei.

``colour_threshold_maps(tiles: uint8 B x h x w x 3) -> float32 B x 3 x h x w`` with channels
(foreground, centre distance, boundary distance) as the PathoSAM decoder emits them:
foreground = 1 where ``R < 150`` and ``B > G + 20``; both distances = ``1 - min(edt / radius, 1)``
(0 deep inside a nucleus, 1 on background), ``edt`` the Euclidean distance to background. The maps
of a pixel depend only on pixels within ``radius`` of it, so tiling with a halo >= ``radius``
gives exactly the maps of an untiled run.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def colour_threshold_maps(tiles: np.ndarray, radius: float = 6.0) -> np.ndarray:
    """Fake decoder maps (see module docstring); accepts one ``h x w x 3`` tile too (B = 1)."""
    t = np.asarray(tiles)
    if t.ndim == 3:
        t = t[None]
    out = np.empty((t.shape[0], 3) + t.shape[1:3], np.float32)
    for b in range(t.shape[0]):
        rgb = t[b].astype(np.int16)
        fg = (rgb[..., 0] < 150) & (rgb[..., 2] > rgb[..., 1] + 20)
        edt = ndimage.distance_transform_edt(fg)
        d = 1.0 - np.minimum(edt / radius, 1.0)
        out[b, 0] = fg
        out[b, 1] = d
        out[b, 2] = d
    return out
