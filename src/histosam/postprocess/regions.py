"""Region instances (glands) from a tissue head's scores: class map by argmax, instances by seeded watershed of the
region mask, seeded by the connected components of the interior channel.

Frames: everything here is at the model's working resolution (``mpp`` µm/px); the caller maps back to the input.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["region_instances", "MIN_REGION_UM2"]

#: regions smaller than this are dropped (µm²): about a 25 µm disc, below the smallest GlaS glands
MIN_REGION_UM2 = 500.0


def region_instances(scores: np.ndarray, mpp: float, min_area_um2: float | None = None,
                     interior_threshold: float = 0.5, seed_erosion_um: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """``scores`` ``(K+1)×H×W`` (K class scores, background first, then the interior score) →
    ``(class_map H×W uint8, instances H×W int32, {instance id: class index})``.

    - class map: argmax of the K class scores;
    - seeds: connected components (8-connected) of ``foreground & interior ≥ threshold`` (foreground = any
      non-background class), eroded by a disc of ``seed_erosion_um`` µm (breaks thin bridges the interior kept);
      a foreground component left without a seed is its own seed (small glands are not lost); each foreground
      pixel joins the seed it reaches first in a watershed on ``1 − interior``, within the foreground;
    - an instance takes the majority class of its pixels (so each instance lies in one class, and the class map
      is rewritten inside it); instances below ``min_area_um2`` (default :data:`MIN_REGION_UM2`) are dropped and
      their pixels become background.
    """
    from skimage.segmentation import watershed

    k = scores.shape[0] - 1
    if k < 2:
        raise ValueError("expected at least two class channels and an interior channel")
    class_map = scores[:k].argmax(axis=0).astype(np.uint8)
    fg = class_map > 0
    min_px = (MIN_REGION_UM2 if min_area_um2 is None else float(min_area_um2)) / (mpp * mpp)
    inner = fg & (scores[k] >= interior_threshold)
    r = int(round(seed_erosion_um / mpp))
    if r > 0:
        from skimage.morphology import disk

        inner = ndi.binary_erosion(inner, structure=disk(r))
    seeds, n = ndi.label(inner, structure=np.ones((3, 3), bool))
    if n:
        sizes = np.bincount(seeds.ravel(), minlength=n + 1)
        small = sizes < max(1.0, min_px / 8)
        small[0] = False
        seeds[small[seeds]] = 0
    comps, n_comps = ndi.label(fg, structure=np.ones((3, 3), bool))
    if n_comps:
        seeded = np.zeros(n_comps + 1, bool)
        seeded[np.unique(comps[seeds > 0])] = True
        orphan = ~seeded[comps] & fg
        if orphan.any():
            extra, _ = ndi.label(orphan, structure=np.ones((3, 3), bool))
            seeds = np.where(orphan, extra + int(seeds.max()), seeds)
    inst = (watershed(1.0 - scores[k], seeds, mask=fg).astype(np.int32) if seeds.any()
            else np.zeros(fg.shape, np.int32))
    out = np.zeros_like(inst)
    classes: dict[int, int] = {}
    new_map = np.zeros_like(class_map)
    objects = ndi.find_objects(inst)
    next_id = 1
    for old, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        m = inst[sl] == old
        if m.sum() < min_px:
            continue
        votes = np.bincount(class_map[sl][m], minlength=k)
        votes[0] = 0
        cls = int(votes.argmax()) if votes.any() else 1
        out[sl][m] = next_id
        new_map[sl][m] = cls
        classes[next_id] = cls
        next_id += 1
    return new_map, out, classes
