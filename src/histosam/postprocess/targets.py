"""Decoder-style maps (foreground, centre distance, boundary distance) computed from a label image.

Follows torch-em's ``PerObjectDistanceTransform`` as used by PathoSAM (``sam-pathosam-internals.md`` §2.6):
per object, the centre is the rounded centroid (or the argmax of the distance to the boundary when the
centroid falls outside the object); the centre distance is the Euclidean distance to that centre, the
boundary distance is ``max_bd - bd`` (0 at the innermost pixel), each normalised per object to [0, 1];
background is 1.0 in both distance channels. Used for synthetic tests and benchmarks of the AIS
post-processing (``watershed_from_maps`` on these maps returns the objects again); the training code may
use it as its target transform. Small-object removal and relabelling of torch-em are not done here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["distance_maps_from_labels"]


def distance_maps_from_labels(labels: np.ndarray) -> np.ndarray:
    """Maps ``float32 3×H×W`` (fg in {0,1}, centre distance, boundary distance) from ``labels`` (int H×W).

    Objects are the ids > 0 of ``labels`` (each assumed to be one connected piece).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    maps = np.ones((3,) + labels.shape, dtype=np.float32)
    maps[0] = labels > 0
    for i, sl in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False)), start=1):
        if sl is None:
            continue
        r0, c0 = sl[0].start, sl[1].start
        crop = labels[sl] == i
        padded = np.pad(crop, 1)
        bd = ndi.distance_transform_edt(padded)[1:-1, 1:-1]
        rr, cc = np.nonzero(crop)
        cy, cx = int(round(rr.mean())), int(round(cc.mean()))
        if not crop[cy, cx]:
            cy, cx = np.unravel_index(int(np.argmax(bd)), bd.shape)
        yy, xx = np.ogrid[: crop.shape[0], : crop.shape[1]]
        cd = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        cd_max = cd[crop].max()
        cd = cd / cd_max if cd_max > 0 else np.zeros_like(cd)
        bd_max = bd[crop].max()
        bdn = (bd_max - bd) / bd_max if bd_max > 0 else np.zeros_like(bd)
        maps[1, r0 + rr, c0 + cc] = cd[crop]
        maps[2, r0 + rr, c0 + cc] = bdn[crop]
    return maps
