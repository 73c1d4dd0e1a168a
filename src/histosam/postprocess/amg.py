"""Automatic mask generation (AMG): a grid of point prompts, quality filtering, box NMS, optional crops.

Follows Meta's ``SamAutomaticMaskGenerator`` and its defaults: ``points_per_side=32``, ``points_per_batch=64``,
``pred_iou_thresh=0.88``, ``stability_score_thresh=0.95``, ``stability_score_offset=1.0``,
``box_nms_thresh=0.7``, ``crop_n_layers=0``, ``crop_nms_thresh=0.7``, ``crop_overlap_ratio=512/1500``,
``crop_n_points_downscale_factor=1``, ``min_mask_region_area=0``. Each point is a single positive prompt with
three (multimask) outputs; the stability score is computed on the upscaled logits (original resolution).

Coordinates: points and boxes (x, y) in image pixels; masks are bool ``H×W`` arrays of the whole image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from histosam.inference import preprocess as pre


@dataclass(frozen=True)
class AMGParams:
    """SAM's AMG parameters (see the module docstring)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None = None, **overrides) -> AMGParams:
        values = {**(d or {}), **overrides}
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            from histosam.errors import HistosamError

            raise HistosamError(f"unknown AMG parameters: {sorted(unknown)}")
        params = cls(**values)
        for name in ("points_per_side", "points_per_batch"):
            value = getattr(params, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                from histosam.errors import ParameterError

                raise ParameterError(f"AMG parameter {name} must be an integer >= 1, got {value!r}")
        return params


@dataclass
class MaskRecord:
    """One generated mask: ``segmentation`` bool H×W, ``bbox`` [x0, y0, w, h] (SAM's XYWH), area, scores."""

    segmentation: np.ndarray
    bbox: list[float]
    area: int
    predicted_iou: float
    stability_score: float
    point_coords: list[float]
    crop_box: list[int] = field(default_factory=list)


def point_grid(n: int) -> np.ndarray:
    """``n²×2`` points in [0, 1]² at cell centres (x, y): ``linspace(1/(2n), 1 − 1/(2n), n)``."""
    offset = 1.0 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)


def crop_boxes(h: int, w: int, n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """SAM's crop boxes ``[x0, y0, x1, y1]`` and their layer indices (layer 0 = the whole image)."""
    boxes, layers = [[0, 0, w, h]], [0]
    short = min(h, w)
    for layer in range(n_layers):
        n = 2 ** (layer + 1)
        overlap = int(overlap_ratio * short * (2 / n))
        cw = int(math.ceil((overlap * (n - 1) + w) / n))
        ch = int(math.ceil((overlap * (n - 1) + h) / n))
        for x0 in [int((cw - overlap) * i) for i in range(n)]:
            for y0 in [int((ch - overlap) * i) for i in range(n)]:
                boxes.append([x0, y0, min(x0 + cw, w), min(y0 + ch, h)])
                layers.append(layer + 1)
    return boxes, layers


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at ``threshold ± offset`` (``… × H × W`` logits → ``…``)."""
    inter = (logits > threshold + offset).sum((-1, -2), dtype=torch.int32)
    union = (logits > threshold - offset).sum((-1, -2), dtype=torch.int32)
    return inter.float() / union.float().clamp(min=1)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bool ``N×H×W`` → ``N×4`` XYXY boxes with inclusive max (SAM's ``batched_mask_to_box``); empty → 0s."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows, cols = masks.any(2), masks.any(1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    bottom = (rows * ar_h).amax(1)
    top = (rows * ar_h + h * (~rows)).amin(1)
    right = (cols * ar_w).amax(1)
    left = (cols * ar_w + w * (~cols)).amin(1)
    boxes = torch.stack([left, top, right, bottom], 1).float()
    empty = (right < left) | (bottom < top)
    boxes[empty] = 0
    return boxes


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS (highest score first, ties by index); returns kept indices in that order."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].double()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    suppressed = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64)]


def _near_crop_edge(boxes: torch.Tensor, crop: list[int], orig: list[int], atol: float = 20.0) -> torch.Tensor:
    crop_t = torch.tensor(crop, dtype=torch.float32)
    orig_t = torch.tensor(orig, dtype=torch.float32)
    near_crop = torch.isclose(boxes, crop_t[None], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig_t[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(1)


def generate_masks(predictor, image: np.ndarray, params: AMGParams | None = None) -> list[MaskRecord]:
    """Run AMG on an image with a :class:`~histosam.inference.predictor.Predictor`; returns the kept masks in
    NMS order (highest predicted IoU first)."""
    p = params or AMGParams()
    h, w = image.shape[:2]
    boxes, layers = crop_boxes(h, w, p.crop_n_layers, p.crop_overlap_ratio)
    records: list[MaskRecord] = []
    crop_of: list[int] = []
    for ci, (box, layer) in enumerate(zip(boxes, layers)):
        x0, y0, x1, y1 = box
        crop = image[y0:y1, x0:x1]
        predictor.set_image(crop)
        n = int(p.points_per_side / (p.crop_n_points_downscale_factor ** layer))
        pts = point_grid(n) * np.array([[x1 - x0, y1 - y0]])
        kept = _crop_masks(predictor, crop, pts, p, box, [0, 0, w, h])
        for rec in kept:
            full = np.zeros((h, w), dtype=bool)
            full[y0:y1, x0:x1] = rec.segmentation
            rec.segmentation = full
            rec.bbox = [rec.bbox[0] + x0, rec.bbox[1] + y0, rec.bbox[2], rec.bbox[3]]
            rec.point_coords = [rec.point_coords[0] + x0, rec.point_coords[1] + y0]
            rec.crop_box = list(box)
        records.extend(kept)
        crop_of.extend([ci] * len(kept))
    if len(boxes) > 1 and records:
        xyxy = torch.tensor([[r.bbox[0], r.bbox[1], r.bbox[0] + r.bbox[2], r.bbox[1] + r.bbox[3]] for r in records])
        areas = torch.tensor([(boxes[c][2] - boxes[c][0]) * (boxes[c][3] - boxes[c][1]) for c in crop_of],
                             dtype=torch.float64)
        keep = box_nms(xyxy, 1.0 / areas, p.crop_nms_thresh)
        records = [records[i] for i in keep.tolist()]
    if p.min_mask_region_area > 0:
        records = _remove_small_regions(records, p)
    return records


def _crop_masks(predictor, crop: np.ndarray, pts: np.ndarray, p: AMGParams, crop_box: list[int],
                orig_box: list[int]) -> list[MaskRecord]:
    ch, cw = crop.shape[:2]
    all_masks, all_iou, all_stab, all_boxes, all_pts = [], [], [], [], []
    for start in range(0, len(pts), p.points_per_batch):
        batch = pts[start: start + p.points_per_batch]
        masks, iou, stab, bxs, bpts = _process_batch(predictor, batch, p, (ch, cw), crop_box, orig_box)
        all_masks.append(masks)
        all_iou.append(iou)
        all_stab.append(stab)
        all_boxes.append(bxs)
        all_pts.append(bpts)
    masks = torch.cat(all_masks) if all_masks else torch.zeros((0, ch, cw), dtype=torch.bool)
    iou, stab = torch.cat(all_iou), torch.cat(all_stab)
    bxs, bpts = torch.cat(all_boxes), np.concatenate(all_pts)
    keep = box_nms(bxs, iou, p.box_nms_thresh)
    out = []
    for i in keep.tolist():
        x0, y0, x1, y1 = bxs[i].tolist()
        out.append(MaskRecord(masks[i].numpy(), [x0, y0, x1 - x0, y1 - y0], int(masks[i].sum()), float(iou[i]),
                              float(stab[i]), bpts[i].tolist()))
    return out


def _process_batch(predictor, pts: np.ndarray, p: AMGParams, size: tuple[int, int], crop_box, orig_box):
    """Predict 3 masks per point, filter by predicted IoU, stability and crop edges (in crop coordinates)."""
    pred = predictor.predict_logits(points=pts[:, None, :], labels=np.ones((len(pts), 1)), multimask=True)
    low = torch.from_numpy(pred.low_res_logits).flatten(0, 1)[:, None]
    iou = torch.from_numpy(pred.scores).flatten()
    point_rep = np.repeat(pts, 3, axis=0)
    keep = iou > p.pred_iou_thresh if p.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
    low, iou, point_rep = low[keep], iou[keep], point_rep[keep.numpy()]
    masks_out, stab_out = [], []
    tile = predictor._require_image()[0]
    for s in range(0, len(low), 16):
        logits = pre.upscale_logits(low[s: s + 16], predictor.frame, tile.input_size, size)[:, 0]
        stab_out.append(stability_score(logits, 0.0, p.stability_score_offset))
        masks_out.append(logits > 0.0)
    if not masks_out:
        empty = torch.zeros((0,), dtype=torch.float32)
        return torch.zeros((0, *size), dtype=torch.bool), empty, empty, torch.zeros((0, 4)), np.zeros((0, 2))
    masks, stab = torch.cat(masks_out), torch.cat(stab_out)
    keep = stab >= p.stability_score_thresh if p.stability_score_thresh > 0 else torch.ones_like(stab, dtype=bool)
    masks, iou, stab, point_rep = masks[keep], iou[keep], stab[keep], point_rep[keep.numpy()]
    boxes = masks_to_boxes(masks)
    shifted = boxes + torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]], dtype=torch.float32)
    keep = ~_near_crop_edge(shifted, crop_box, orig_box)
    return masks[keep], iou[keep], stab[keep], boxes[keep], point_rep[keep.numpy()]


def _remove_small_regions(records: list[MaskRecord], p: AMGParams) -> list[MaskRecord]:
    """Remove small holes and islands (< ``min_mask_region_area``), then re-run NMS (SAM's post-processing)."""
    from skimage.morphology import remove_small_holes, remove_small_objects

    area = p.min_mask_region_area
    for r in records:
        m = remove_small_holes(r.segmentation, area_threshold=area)
        r.segmentation = remove_small_objects(m, min_size=area)
        r.area = int(r.segmentation.sum())
    records = [r for r in records if r.area > 0]
    if not records:
        return records
    boxes = masks_to_boxes(torch.from_numpy(np.stack([r.segmentation for r in records])))
    keep = box_nms(boxes, torch.tensor([r.predicted_iou for r in records]), p.box_nms_thresh)
    return [records[i] for i in keep.tolist()]


def masks_to_labels(records: list[MaskRecord], shape: tuple[int, int]) -> np.ndarray:
    """Paint masks largest first (smaller ones overwrite), then relabel 1..N in painting order (uint32)."""
    labels = np.zeros(shape, dtype=np.uint32)
    order = sorted(range(len(records)), key=lambda i: -records[i].area)
    for new_id, i in enumerate(order, start=1):
        labels[records[i].segmentation] = new_id
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.uint32)
