"""Prompt simulation for the interactive training objective (as micro-sam's ``SamTrainer``).

All sampling uses a ``numpy.random.Generator`` that the caller passes in. Masks are boolean
``N×H×W`` numpy arrays in the *patch* frame; returned coordinates are **(x, y)** float32 pixels in
the patch frame (multiply by ``image_size / max(H, W)`` for the model's input frame, see
``to_input_frame``). Boxes are ``[x0, y0, x1, y1]`` with exclusive maxima, as micro-sam passes them.
"""

from __future__ import annotations

import numpy as np


def prompt_kind(iteration: int) -> tuple[str, bool]:
    """``("point", multimask=True)`` on even iterations, ``("box", False)`` on odd ones."""
    return ("point", True) if iteration % 2 == 0 else ("box", False)


def sample_object_ids(instances: np.ndarray, n_objects: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n_objects`` distinct non-zero ids of ``instances`` drawn without replacement, sorted."""
    ids = np.unique(instances)
    ids = ids[ids != 0]
    if len(ids) == 0:
        return ids
    chosen = rng.choice(ids, size=min(n_objects, len(ids)), replace=False)
    return np.sort(chosen)


def sample_batch_objects(instances: np.ndarray, n_objects: int,
                         rng: np.random.Generator) -> list[np.ndarray]:
    """Per image of ``B×H×W`` instances: sampled ids, truncated to the smallest count in the batch."""
    chosen = [sample_object_ids(inst, n_objects, rng) for inst in instances]
    n = min(len(c) for c in chosen)
    return [c[:n] for c in chosen]


def _uniform_pixel(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float] | None:
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return None
    r, c = divmod(int(flat[rng.integers(0, flat.size)]), mask.shape[1])
    return float(c), float(r)


def random_points(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One positive point per mask, uniform over its pixels. Returns ``N×1×2`` float32 (x, y)."""
    out = np.zeros((len(masks), 1, 2), np.float32)
    for i, m in enumerate(masks):
        p = _uniform_pixel(m, rng)
        if p is None:
            raise ValueError(f"mask {i} is empty: cannot sample a point")
        out[i, 0] = p
    return out


def boxes_from_masks(masks: np.ndarray, rng: np.random.Generator | None = None,
                     distortion: float = 0.025, shift: float = 0.0) -> np.ndarray:
    """Bounding boxes ``N×4`` float32 ``[x0, y0, x1, y1]`` (max exclusive), jittered outward.

    Each side moves outward by ``round(U(0, distortion) · side length)`` px (independently per side;
    x sides use the box width, y sides its height) and is clipped to the image. With ``shift`` > 0 each side
    then moves by ``round(U(−shift, shift) · side length)`` px, in or out (a user's box that cuts into the object or
    sits off-centre); a box keeps at least one pixel a side.
    """
    n, h, w = masks.shape
    out = np.zeros((n, 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.any(m, axis=1), np.any(m, axis=0)
        if not rows.any():
            raise ValueError(f"mask {i} is empty: cannot compute a box")
        y0, y1 = np.argmax(rows), h - np.argmax(rows[::-1])
        x0, x1 = np.argmax(cols), w - np.argmax(cols[::-1])
        if rng is not None and distortion > 0:
            bw, bh = x1 - x0, y1 - y0
            d = rng.uniform(0, distortion, size=4)
            x0 = max(0, x0 - int(round(d[0] * bw)))
            y0 = max(0, y0 - int(round(d[1] * bh)))
            x1 = min(w, x1 + int(round(d[2] * bw)))
            y1 = min(h, y1 + int(round(d[3] * bh)))
        if rng is not None and shift > 0:
            bw, bh = x1 - x0, y1 - y0
            d = rng.uniform(-shift, shift, size=4)
            x0 = int(np.clip(x0 + round(d[0] * bw), 0, w - 1))
            y0 = int(np.clip(y0 + round(d[1] * bh), 0, h - 1))
            x1 = int(np.clip(x1 + round(d[2] * bw), x0 + 1, w))
            y1 = int(np.clip(y1 + round(d[3] * bh), y0 + 1, h))
        out[i] = (x0, y0, x1, y1)
    return out


def correction_points(gt: np.ndarray, pred: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One positive and one negative correction point per object (micro-sam ``IterativePromptGenerator``).

    - positive: uniform in ``gt & ~pred`` (false negatives); fallback ``gt & pred``, then ``gt``;
    - negative: uniform in ``pred & ~gt`` (false positives); fallback: the GT bounding box enlarged
      by 3 px minus the object; last fallback: any pixel outside the object.

    Args:
        gt, pred: boolean ``N×H×W`` (pred = the chosen output, binarised at logit > 0).

    Returns:
        ``(coords N×2×2 float32 (x, y), labels N×2 int64 [1, 0])``.
    """
    n, h, w = gt.shape
    coords = np.zeros((n, 2, 2), np.float32)
    for i in range(n):
        g, p = gt[i], pred[i]
        pos = _uniform_pixel(g & ~p, rng)
        if pos is None:
            pos = _uniform_pixel(g & p, rng) or _uniform_pixel(g, rng) or (0.0, 0.0)
        neg = _uniform_pixel(p & ~g, rng)
        if neg is None:
            rows, cols = np.flatnonzero(g.any(1)), np.flatnonzero(g.any(0))
            ring = np.zeros_like(g)
            if rows.size:
                ring[max(rows[0] - 3, 0):rows[-1] + 4, max(cols[0] - 3, 0):cols[-1] + 4] = True
            neg = _uniform_pixel(ring & ~g, rng) or _uniform_pixel(~g, rng) or (0.0, 0.0)
        coords[i, 0], coords[i, 1] = pos, neg
    labels = np.tile(np.array([[1, 0]], np.int64), (n, 1))
    return coords, labels


def to_input_frame(coords: np.ndarray, patch_hw: tuple[int, int], image_size: int) -> np.ndarray:
    """Scale (x, y) points or ``[x0, y0, x1, y1]`` boxes from the patch frame to the model input frame
    (the patch resized so its longest side is ``image_size``)."""
    return (np.asarray(coords, np.float32) * (image_size / max(patch_hw))).astype(np.float32)


def frame_origin(patch: int, frame: int, stride: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random (row, col) for a ``patch``-px patch inside a ``frame``-px frame, a multiple of ``stride`` (the
    embedding stride, so the encoder sees the patch on the same grid as at inference), uniform over the places
    that keep the patch inside the frame: training prompts then reach every part of the frame, not only its
    top-left ``patch``² corner."""
    last = (frame - patch) // stride
    r, c = rng.integers(0, last + 1, size=2)
    return int(r) * stride, int(c) * stride
