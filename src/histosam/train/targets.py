"""Training targets of the instance decoder (PathoSAM / torch-em ``PerObjectDistanceTransform``).

PathoSAM settings: ``distances=True, boundary_distances=True, directed_distances=False, foreground=True,
instances=True, apply_label=True, correct_centers=True, min_size=10, distance_fill_value=1.0``.

For each object (after connected components and dropping objects smaller than ``min_size`` px):

- centre = rounded centroid (``np.round``, half to even); if that pixel is not in the object, the
  pixel of maximal distance to the boundary (first argmax in C order) is used instead;
- centre distance = Euclidean distance to the centre pixel, inside the object, divided by
  ``max + 1e-7`` (per object);
- boundary distance = ``bd[max point] - bd`` where ``bd`` is the Euclidean distance to the nearest
  *inner boundary* pixel (``skimage.segmentation.find_boundaries(mode="inner")`` of the whole label
  image, computed on the object's bounding-box crop), divided by ``max + 1e-7`` (per object);
- background pixels of both distance channels are 1.0; foreground channel is ``labels > 0``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as cc_label
from skimage.segmentation import find_boundaries

EPS = 1e-7


def relabel_instances(labels: np.ndarray, min_size: int = 10) -> np.ndarray:
    """Connected components (8-connected, each id separately) and removal of small objects.

    Args:
        labels: ``H×W`` integer instance labels, 0 = background.
        min_size: objects with fewer pixels are set to 0.

    Returns:
        ``H×W`` uint32 labels with consecutive ids 1..N.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H×W), got shape {labels.shape}")
    seg = cc_label(np.asarray(labels), background=0).astype(np.uint32)
    if min_size > 0 and seg.max() > 0:
        sizes = np.bincount(seg.ravel())
        keep = sizes >= min_size
        keep[0] = False
        lut = np.zeros(len(sizes), dtype=np.uint32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
        seg = lut[seg]
    return seg


def object_centres(seg: np.ndarray) -> np.ndarray:
    """Rounded centroids ``(N, 2)`` int64 in (row, col) for ids 1..N of a consecutive label image."""
    n = int(seg.max())
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    rows, cols = np.indices(seg.shape)
    flat = seg.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    r = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:] / counts
    c = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:] / counts
    return np.stack([np.round(r), np.round(c)], axis=1).astype(np.int64)


def distance_targets(labels: np.ndarray, min_size: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels and the 3-channel decoder targets.

    Args:
        labels: ``H×W`` integer instance labels (0 = background).
        min_size: minimal object size in pixels (PathoSAM: 10).

    Returns:
        ``(instances, targets)``: ``instances`` uint32 ``H×W`` (connected components, small objects
        removed, consecutive ids) and ``targets`` float32 ``3×H×W`` = foreground, normalised centre
        distance, normalised boundary distance (both 1.0 on background).
    """
    seg = relabel_instances(labels, min_size)
    h, w = seg.shape
    fg = (seg > 0).astype(np.float32)
    cd = np.ones((h, w), dtype=np.float32)
    bdist = np.ones((h, w), dtype=np.float32)
    if seg.max() == 0:
        return seg, np.stack([fg, cd, bdist])

    boundaries = find_boundaries(seg, mode="inner")
    centres = object_centres(seg)
    for idx, bb in enumerate(ndimage.find_objects(seg)):
        if bb is None:
            continue
        obj_id = idx + 1
        mask = seg[bb] == obj_id
        bnd = boundaries[bb]
        if bnd.any():
            bd = ndimage.distance_transform_edt(~bnd)
        else:  # object without boundary pixels in its crop (e.g. it fills the image)
            bd = np.zeros(mask.shape, dtype=np.float64)
        bd[~mask] = 0
        max_pt = np.unravel_index(int(np.argmax(bd)), bd.shape)

        centre = (int(centres[idx, 0]) - bb[0].start, int(centres[idx, 1]) - bb[1].start)
        if not mask[centre]:
            centre = max_pt
        rr, cc = np.indices(mask.shape)
        c_dist = np.sqrt((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2)
        c_dist[~mask] = 0
        c_dist = c_dist / (np.abs(c_dist).max() + EPS)

        b_dist = bd[max_pt] - bd
        b_dist[~mask] = 0
        b_dist = b_dist / (np.abs(b_dist).max() + EPS)

        cd[bb][mask] = c_dist[mask]
        bdist[bb][mask] = b_dist[mask]
    return seg, np.stack([fg, cd, bdist])
