"""Interactive evaluation protocols, seeded and written against the Predictor contract.

The predictor is anything with ``set_image(image)`` and ``predict(points, labels, box, mask_input,
multimask) -> Prediction`` as in ``docs/architecture.md``: points ``(B,N,2)`` float (x, y) image pixels,
labels ``(B,N)`` (1 fg, 0 bg), box ``(B,4)`` ``[x0, y0, x1, y1]``, mask_input ``(B,1,256,256)`` logits;
the prediction has ``masks`` bool ``(B,C,H,W)``, ``scores`` ``(B,C)``, ``low_res_logits`` ``(B,C,256,256)``.

Two protocols:

- :func:`iterative_prompting`: micro-sam / PathoSAM (one initial point at the object centre, or the
  tight box; then per iteration one positive point from the false negatives and one negative point from
  the false positives of the object's own mask); label image merged per iteration, scored by mSA.
- :func:`click_protocol`: the NoC/NoF/SPC click protocol used by Kim et al. (after Xu et al. / RITM):
  every click at the interior (distance-transform maximum) of the largest error region, positive on a
  false negative region and negative on a false positive one, previous logits fed back as mask prompt.

Objects are represented by sorted flat pixel indices (memory proportional to object area), so
images with hundreds of objects stay cheap. All randomness comes from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import ndimage as ndi

from histosam.errors import ParameterError
from histosam.evaluation.metrics import MSA_THRESHOLDS, segmentation_accuracy_scores


class PredictorLike(Protocol):
    def set_image(self, image: np.ndarray) -> None: ...

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask: bool = False) -> Any: ...


# ------------------------------------------------------------------------------- object geometry


def object_centers(labels: np.ndarray) -> dict[int, tuple[int, int]]:
    """``{id: (x, y)}``: per object the pixel farthest from any object boundary (micro-sam HEAD).

    Distance = EDT to ``find_boundaries(pad(labels, 1), mode="inner")``, maximised inside the object;
    ties go to the first pixel in row-major order.
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return {}
    bd = find_boundaries(np.pad(labels, 1), mode="inner")[1:-1, 1:-1]
    dist = ndi.distance_transform_edt(~bd)
    idx = np.flatnonzero(labels)
    lab = labels.ravel()[idx]
    order = np.lexsort((idx, -dist.ravel()[idx], lab))  # per id: deepest, then first row-major
    first = np.r_[True, lab[order][1:] != lab[order][:-1]]
    w = labels.shape[1]
    return {int(lab[k]): (int(idx[k] % w), int(idx[k] // w)) for k in order[first]}


def object_boxes(labels: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """``{id: (min_col, min_row, max_col, max_row)}`` tight boxes, max exclusive (micro-sam)."""
    labels = np.asarray(labels)
    out = {}
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is not None:
            out[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return out


def _object_pixels(labels: np.ndarray, ids) -> dict[int, np.ndarray]:
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_ids = flat[order]
    lo = np.searchsorted(sorted_ids, ids, "left")
    hi = np.searchsorted(sorted_ids, ids, "right")
    return {int(i): np.sort(order[a:b]) for i, a, b in zip(ids, lo, hi)}


def merge_masks(shape: tuple[int, int], masks: dict[int, np.ndarray]) -> np.ndarray:
    """Per-object flat pixel indices -> uint32 label image; larger first, smaller ones overwrite."""
    out = np.zeros(int(np.prod(shape)), np.uint32)
    for oid in sorted(masks, key=lambda k: (-len(masks[k]), k)):
        out[masks[oid]] = oid
    return out.reshape(shape)


def _chunks(n: int, batch_size: int | None):
    step = n if not batch_size else batch_size
    for a in range(0, n, max(step, 1)):
        yield slice(a, min(a + step, n))


def _xy(flat_index: int, width: int) -> tuple[float, float]:
    r, c = divmod(int(flat_index), width)
    return float(c), float(r)


# -------------------------------------------------------------------------- iterative prompting


def correction_points(
    gt_idx: np.ndarray, pred_idx: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int],
    rng: np.random.Generator, ring: int = 3,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """One positive and one negative (x, y) point for an object (micro-sam's generator and fallbacks).

    Positive: uniform in GT \\ pred, else uniform in GT ∩ pred. Negative: uniform in pred \\ GT, else
    in the GT box enlarged by ``ring`` px minus the object, else anywhere outside the object.
    """
    h, w = shape
    fn = np.setdiff1d(gt_idx, pred_idx, assume_unique=True)
    pos_region = fn if fn.size else np.intersect1d(gt_idx, pred_idx, assume_unique=True)
    if pos_region.size == 0:
        pos_region = gt_idx
    pos = _xy(pos_region[rng.integers(pos_region.size)], w)
    fp = np.setdiff1d(pred_idx, gt_idx, assume_unique=True)
    if fp.size == 0:
        x0, y0, x1, y1 = box
        rr, cc = np.mgrid[max(y0 - ring, 0) : min(y1 + ring, h), max(x0 - ring, 0) : min(x1 + ring, w)]
        fp = np.setdiff1d((rr * w + cc).ravel(), gt_idx)
    if fp.size == 0:
        fp = np.setdiff1d(np.arange(h * w), gt_idx, assume_unique=True)
    neg = _xy(fp[rng.integers(fp.size)], w) if fp.size else pos
    return pos, neg


@dataclass
class IterativeResult:
    """Per-iteration scores of :func:`iterative_prompting` for one image (index 0 = initial prompt)."""

    start: str
    n_objects: int
    msa: list[float] = field(default_factory=list)
    sa: list[np.ndarray] = field(default_factory=list)  # SA at the 10 mSA thresholds, per iteration
    predictions: list[np.ndarray] = field(default_factory=list)  # label images if keep_predictions

    @property
    def sa50(self) -> list[float]:
        return [float(s[0]) for s in self.sa]


def iterative_prompting(
    predictor: PredictorLike,
    image: np.ndarray,
    gt: np.ndarray,
    *,
    start: str = "point",
    n_iterations: int = 8,
    use_masks: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    keep_predictions: bool = False,
    relabel: bool = False,
    mpp: float | None = None,
) -> IterativeResult:
    """PathoSAM / micro-sam iterative prompting on one image.

    ``gt``: H×W instance labels (every non-zero id is prompted). ``start``: ``"point"`` (one positive
    at the object centre, multimask, keep the highest-scoring mask) or ``"box"`` (tight box, single
    mask). Each later iteration adds one positive and one negative correction point per object
    (accumulated), single mask; with ``use_masks`` the previous low-res logits go in as ``mask_input``.
    ``batch_size=None`` prompts all objects in one ``predict`` call per iteration. mSA per iteration is
    computed against ``gt`` (connected-component relabelled first only if ``relabel``). ``mpp``: µm/px of
    ``image`` (the predictor resamples it to the model's resolution; prompts and masks stay in image pixels).
    """
    if start not in ("point", "box"):
        raise ParameterError(f"start must be 'point' or 'box', got {start!r}")
    gt = np.asarray(gt)
    shape = gt.shape[:2]
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in np.unique(gt[gt > 0])]
    result = IterativeResult(start, len(ids))
    _set_image(predictor, image, mpp)
    boxes = object_boxes(gt)
    gt_px = _object_pixels(gt, ids)
    centres = object_centers(gt) if start == "point" else {}
    pts: dict[int, list[tuple[float, float]]] = {
        i: ([(float(centres[i][0]), float(centres[i][1]))] if start == "point" else []) for i in ids}
    lbl: dict[int, list[int]] = {i: ([1] if start == "point" else []) for i in ids}
    masks: dict[int, np.ndarray] = {}
    logits: dict[int, np.ndarray] = {}
    for it in range(n_iterations):
        if it > 0:
            for i in ids:
                pos, neg = correction_points(gt_px[i], masks[i], boxes[i], shape, rng)
                pts[i] += [pos, neg]
                lbl[i] += [1, 0]
        multimask = it == 0 and start == "point"
        for sl in _chunks(len(ids), batch_size):
            batch = ids[sl]
            kw: dict[str, Any] = {"multimask": multimask}
            if pts[batch[0]]:
                kw["points"] = np.array([pts[i] for i in batch], np.float32)
                kw["labels"] = np.array([lbl[i] for i in batch], np.int64)
            if start == "box":
                kw["box"] = np.array([boxes[i] for i in batch], np.float32)
            if use_masks and it > 0:
                kw["mask_input"] = np.stack([logits[i] for i in batch])
            pred = predictor.predict(**kw)
            best = np.asarray(pred.scores).argmax(axis=1) if multimask else np.zeros(len(batch), int)
            for b, i in enumerate(batch):
                masks[i] = np.flatnonzero(np.asarray(pred.masks[b, best[b]]))
                if use_masks:
                    logits[i] = np.asarray(pred.low_res_logits[b, best[b]][None], np.float32)
        seg = merge_masks(shape, masks)
        scores = segmentation_accuracy_scores(gt, seg, MSA_THRESHOLDS, relabel=relabel)
        result.sa.append(scores)
        result.msa.append(float(scores.mean()))
        if keep_predictions:
            result.predictions.append(seg)
    return result


# ---------------------------------------------------------------------------- click protocol


def next_click(
    gt_mask: np.ndarray, pred_mask: np.ndarray, region: str = "largest"
) -> tuple[tuple[int, int], int] | None:
    """Next simulated click ``((x, y), label)`` for two bool masks, or None if they agree.

    The click goes to the distance-transform maximum (image border counts as boundary) of the error
    region: ``region="largest"`` uses the connected error component (FN or FP, 8-connected) with the
    most pixels (Xu et al.); ``"deepest"`` takes the deepest error pixel overall (RITM). Label 1 for a
    false-negative region, 0 for a false-positive one. Ties: larger area, then FN, then row-major.
    """
    fn = gt_mask & ~pred_mask
    fp = pred_mask & ~gt_mask
    if not (fn.any() or fp.any()):
        return None
    best = None
    for lab, err in ((1, fn), (0, fp)):
        if not err.any():
            continue
        if region == "largest":
            comps, n = ndi.label(err, structure=np.ones((3, 3)))
            areas = np.bincount(comps.ravel())[1:]
            k = int(areas.argmax()) + 1
            key = int(areas[k - 1])
            err = comps == k
        elif region != "deepest":
            raise ParameterError(f"region must be 'largest' or 'deepest', got {region!r}")
        dist = ndi.distance_transform_edt(np.pad(err, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(dist.argmax()), dist.shape)
        if region == "deepest":
            key = float(dist[r, c])
        if best is None or key > best[0]:
            best = (key, (int(c), int(r)), lab)
    return best[1], best[2]


def _click_in_crop(gt_idx: np.ndarray, pred_idx: np.ndarray, shape: tuple[int, int], region: str):
    """:func:`next_click` on the bounding box of GT ∪ prediction (flat indices), in image (x, y)."""
    w = shape[1]
    both = np.concatenate([gt_idx, pred_idx])
    rows, cols = both // w, both % w
    r0, c0 = int(rows.min()), int(cols.min())
    ch, cw = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
    g = np.zeros((ch, cw), bool)
    p = np.zeros((ch, cw), bool)
    g[gt_idx // w - r0, gt_idx % w - c0] = True
    p[pred_idx // w - r0, pred_idx % w - c0] = True
    click = next_click(g, p, region)
    if click is None:
        return None
    (x, y), lab = click
    return (x + c0, y + r0), lab


@dataclass
class ClickResult:
    """Per-object IoU after each click (``ious``: float64 ``n_objects × max_clicks``) and timing."""

    ious: np.ndarray
    predict_seconds: float
    n_clicks: int
    embed_seconds: float = 0.0

    @property
    def spc(self) -> float:
        """Seconds of ``predict`` per click per object (batched calls share the time)."""
        return self.predict_seconds / self.n_clicks if self.n_clicks else float("nan")

    @property
    def spc_with_embedding(self) -> float:
        """As :attr:`spc`, with the one ``set_image`` (encoder) call spread over the clicks."""
        total = self.predict_seconds + self.embed_seconds
        return total / self.n_clicks if self.n_clicks else float("nan")

    def noc(self, target: float) -> float:
        """Mean number of clicks to reach IoU >= target (``max_clicks`` for objects that never do)."""
        return float(noc_per_object(self.ious, target).mean()) if len(self.ious) else float("nan")

    def nof(self, target: float) -> float:
        """Fraction of objects that never reach the target within ``max_clicks`` (NoF / n)."""
        return float((~(self.ious >= target).any(axis=1)).mean()) if len(self.ious) else float("nan")


def noc_per_object(ious: np.ndarray, target: float) -> np.ndarray:
    """Clicks (1-based) until IoU >= target per row of ``ious``; ``ious.shape[1]`` where never."""
    hit = ious >= target
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, ious.shape[1])


def click_protocol(
    predictor: PredictorLike,
    image: np.ndarray,
    gt: np.ndarray,
    *,
    max_clicks: int = 20,
    use_masks: bool = True,
    first_multimask: bool = True,
    region: str = "largest",
    batch_size: int | None = None,
    mpp: float | None = None,
) -> ClickResult:
    """Kim et al. / RITM click protocol for every object of ``gt`` (H×W labels).

    Click 1 is the error-region click on an empty prediction (the object interior); with
    ``first_multimask`` it asks for 3 masks and keeps the highest score. Every further click adds one
    point (accumulated) and, with ``use_masks``, the previous low-res logits as ``mask_input``. All
    ``max_clicks`` are run for every object so the IoU-per-click curve is complete; NoC uses the first
    click reaching the target. Deterministic (no randomness). Error regions are computed in the
    bounding box of GT ∪ prediction, which gives the same clicks as the full image. ``mpp``: µm/px of ``image``.
    """
    gt = np.asarray(gt)
    shape = gt.shape[:2]
    ids = [int(i) for i in np.unique(gt[gt > 0])]
    ious = np.zeros((len(ids), max_clicks), np.float64)
    t0 = time.perf_counter()
    _set_image(predictor, image, mpp)
    embed_seconds = time.perf_counter() - t0
    gt_px = _object_pixels(gt, ids)
    seconds = 0.0
    for sl in _chunks(len(ids), batch_size):
        batch = ids[sl]
        pts: list[list[tuple[int, int]]] = [[] for _ in batch]
        lbl: list[list[int]] = [[] for _ in batch]
        pred_px = [np.zeros(0, np.int64) for _ in batch]
        logits = None
        for k in range(max_clicks):
            for b, i in enumerate(batch):
                click = _click_in_crop(gt_px[i], pred_px[b], shape, region)
                if click is None:  # already perfect: repeat the last point (no-op click)
                    click = (pts[b][-1], lbl[b][-1])
                pts[b].append(click[0])
                lbl[b].append(click[1])
            multimask = first_multimask and k == 0
            kw: dict[str, Any] = {
                "points": np.array(pts, np.float32), "labels": np.array(lbl, np.int64), "multimask": multimask}
            if use_masks and logits is not None:
                kw["mask_input"] = logits
            t0 = time.perf_counter()
            pred = predictor.predict(**kw)
            seconds += time.perf_counter() - t0
            best = np.asarray(pred.scores).argmax(axis=1) if multimask else np.zeros(len(batch), int)
            logits = np.stack([np.asarray(pred.low_res_logits[b, best[b]][None], np.float32)
                               for b in range(len(batch))])
            for b, i in enumerate(batch):
                pred_px[b] = np.flatnonzero(np.asarray(pred.masks[b, best[b]]))
                inter = np.intersect1d(gt_px[i], pred_px[b], assume_unique=True).size
                union = gt_px[i].size + pred_px[b].size - inter
                ious[sl.start + b, k] = inter / union if union else 0.0
    return ClickResult(ious, seconds, len(ids) * max_clicks, embed_seconds)


def _set_image(predictor: PredictorLike, image: np.ndarray, mpp: float | None) -> None:
    """``set_image`` with the pixel size when one is given (predictors without an ``mpp`` argument get none)."""
    if mpp is None:
        predictor.set_image(image)
    else:
        predictor.set_image(image, mpp=mpp)  # type: ignore[call-arg]
