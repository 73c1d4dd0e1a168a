"""Prompts with multi-resolution context (WSI-SAM): HR/LR frame geometry and a predictor that reads the LR field
from the same image or from the slide.

Geometry (:class:`ContextGeometry`), all in **working pixels** (the model's resolution, ``config.mpp``):

- the **HR frame** is ``S × S`` (``S`` = the model's frame) with its top-left corner at an integer ``hr0``;
- the **LR frame** covers the concentric ``scale·S`` field (top-left ``lr0 = hr0 − (scale − 1)·S/2``),
  resampled to ``S × S`` (one LR pixel = ``scale × scale`` working pixels, area average);
- a prompt coordinate ``c`` (SAM's pixel coordinates: the centre of pixel ``i`` is ``i + 0.5``) maps to ``c − hr0``
  in the HR frame and to ``(c + 0.5 − lr0)/scale − 0.5`` in the LR frame;
- whatever lies outside the image (or slide) is **padding**: its pixels are the model's padding value (zero after
  normalisation, as the frame's bottom/right padding), whether the source reads it as white or not.

:class:`ContextPredictor` places the HR frame centred on the prompts' extent; ``set_image`` takes the LR field
from the same image (padded where the image ends), ``set_slide_region`` from the slide pyramid (the HR patch at
the working mpp, the LR patch read at ``scale ×`` the working mpp, i.e. from a coarser level). ``context=False``
decodes the same HR frame with the model's plain mask decoder (the comparison WSI-SAM reports).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from histosam.errors import HistosamError, ParameterError

__all__ = ["ContextGeometry", "crop_padded", "downsample_area", "ImageSource", "SlideSource", "ContextPredictor",
           "ContextPrediction", "frames_tensor"]


@dataclass(frozen=True)
class ContextGeometry:
    """HR/LR frames of side ``frame`` (working px); LR field ``scale`` times wider, concentric."""

    frame: int
    scale: int = 4

    def __post_init__(self) -> None:
        if self.frame % 2 or self.scale < 1:
            raise ParameterError(f"frame must be even and scale >= 1 (got {self.frame}, {self.scale})")

    def hr_origin(self, center_xy) -> tuple[int, int]:
        """Integer top-left ``(x, y)`` of the HR frame centred on ``center_xy`` (working px, SAM coordinates)."""
        cx, cy = float(center_xy[0]) + 0.5, float(center_xy[1]) + 0.5  # continuous position
        return int(np.floor(cx - self.frame / 2 + 0.5)), int(np.floor(cy - self.frame / 2 + 0.5))

    def lr_origin(self, hr0) -> tuple[int, int]:
        off = (self.scale - 1) * self.frame // 2
        return int(hr0[0]) - off, int(hr0[1]) - off

    def to_hr(self, xy: np.ndarray, hr0) -> np.ndarray:
        """Working coordinates ``…×2`` (x, y) → HR frame."""
        return np.asarray(xy, np.float64) - np.asarray(hr0, np.float64)

    def to_lr(self, xy: np.ndarray, hr0) -> np.ndarray:
        """Working coordinates ``…×2`` (x, y) → LR frame."""
        lr0 = np.asarray(self.lr_origin(hr0), np.float64)
        return (np.asarray(xy, np.float64) + 0.5 - lr0) / self.scale - 0.5

    def boxes_to(self, boxes: np.ndarray, hr0, frame: str) -> np.ndarray:
        """Boxes ``…×4`` (x0, y0, x1, y1) into the ``"hr"`` or ``"lr"`` frame."""
        b = np.asarray(boxes, np.float64).reshape(*np.shape(boxes)[:-1], 2, 2)
        fn = self.to_hr if frame == "hr" else self.to_lr
        return fn(b, hr0).reshape(np.shape(boxes))


def crop_padded(rgb: np.ndarray, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """``rgb[y0:y0+h, x0:x0+w]`` with white outside the image, and the mask of pixels inside it."""
    H, W = rgb.shape[:2]
    out = np.full((h, w, 3), 255, np.uint8)
    valid = np.zeros((h, w), bool)
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
    if ya < yb and xa < xb:
        out[ya - y0:yb - y0, xa - x0:xb - x0] = rgb[ya:yb, xa:xb]
        valid[ya - y0:yb - y0, xa - x0:xb - x0] = True
    return out, valid


def downsample_area(rgb: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Area average over ``k × k`` blocks of the valid pixels; a block is valid when at least half of it is."""
    if k == 1:
        return rgb, valid
    h, w = valid.shape
    v = valid.reshape(h // k, k, w // k, k).astype(np.float32)
    s = (rgb.astype(np.float32) * valid[..., None]).reshape(h // k, k, w // k, k, 3).sum(axis=(1, 3))
    n = v.sum(axis=(1, 3))
    out = np.where(n[..., None] > 0, s / np.maximum(n, 1)[..., None], 255.0)
    return np.clip(np.round(out), 0, 255).astype(np.uint8), n >= 0.5 * k * k


class ImageSource:
    """HR/LR patches of an in-memory working-resolution image (padding outside it)."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[:2]

    def read(self, x0: int, y0: int, side: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
        """``side × side`` patch of the field ``[x0, x0 + side·scale)²`` (working px) and its valid mask."""
        rgb, valid = crop_padded(self.rgb, x0, y0, side * scale, side * scale)
        return downsample_area(rgb, valid, scale)


class SlideSource:
    """HR/LR patches read from a slide: working pixel ``(x, y)`` is level-0 ``((x + ox)·s, (y + oy)·s)`` with
    ``s = mpp / slide.mpp`` and ``(ox, oy)`` the region's origin in the working frame; LR patches are read at
    ``scale × mpp`` (:meth:`~histosam.wsi.reader.SlideReader.read_at_mpp` picks the coarser level)."""

    def __init__(self, slide, mpp: float, origin_xy: tuple[float, float], shape: tuple[int, int]) -> None:
        self.slide, self.mpp, self.origin = slide, float(mpp), origin_xy
        self._shape = shape

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def read(self, x0: int, y0: int, side: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
        mpp = self.mpp * scale
        gx, gy = (x0 + self.origin[0]) / scale, (y0 + self.origin[1]) / scale  # in the frame at mpp·scale
        rgb = self.slide.read_at_mpp(gx, gy, side, side, mpp)
        s = mpp / self.slide.mpp  # level-0 px per patch px
        w0, h0 = self.slide.dimensions
        xs = (gx + np.arange(side) + 0.5) * s
        ys = (gy + np.arange(side) + 0.5) * s
        valid = ((ys >= 0) & (ys < h0))[:, None] & ((xs >= 0) & (xs < w0))[None, :]
        return rgb, valid


def frames_tensor(model, patches: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
    """Patches ``(rgb S×S×3, valid S×S)`` → the model's normalised input ``N×3×S×S`` with padding (0) where
    ``valid`` is False."""
    rgb = torch.from_numpy(np.stack([p[0] for p in patches])).permute(0, 3, 1, 2).float()
    valid = torch.from_numpy(np.stack([p[1] for p in patches]))[:, None].float()
    x = model.preprocess(rgb.to(model.device), pad_to=rgb.shape[-1])
    return x * valid.to(x.device)


@dataclass
class ContextPrediction:
    """One prompt set's result.

    Attributes:
        mask: bool ``H×W`` in the caller's pixels (the image given to ``set_image``, or the slide region at the
            caller's mpp): the HR mask inside the HR frame; with ``extend``, the LR mask outside it.
        score: SAM's predicted IoU.
        hr_logits: logits on the mask decoder's grid (4× the embedding) in the HR frame; lr_logits in the LR
            frame (only with ``extend``; ``None`` otherwise and without context).
        hr_origin: the HR frame's top-left (x, y) in working pixels of the image/region.
        context: whether the LR context was used.
    """

    mask: np.ndarray
    score: float
    hr_logits: np.ndarray
    lr_logits: np.ndarray | None
    hr_origin: tuple[int, int]
    context: bool


class ContextPredictor:
    """Prompted segmentation with WSI-SAM context (see the module docstring).

    Args:
        model: a model with a context head (``model.context_decoder``), a registry name or a path.
        device: torch device (default: the model's).
        context: default for :meth:`predict` (``False``: the model's plain mask decoder on the HR frame).
        cache_size: HR/LR frame encodings kept.
    """

    def __init__(self, model=None, device=None, context: bool = True, cache_size: int = 16) -> None:
        if model is None or isinstance(model, str | os.PathLike):
            from histosam.registry.loader import load_model

            model = load_model(model, device=device)
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.context = bool(context) and model.context_decoder is not None
        if context and model.context_decoder is None:
            raise HistosamError(f"model {model.config.name!r} has no context head; pass context=False")
        spec = model.config.context or {}
        self.geometry = ContextGeometry(int(model.image_size), int(spec.get("scale", 4)))
        self.working_mpp = model.config.mpp
        self._source = None
        self._factor = 1.0  # working px per caller px
        self._out_shape: tuple[int, int] | None = None
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()
        self.cache_size = cache_size

    # ---------------------------------------------------------------- sources
    def set_image(self, image: np.ndarray, mpp: float | None = None) -> None:
        """An image (``H×W×3``); with ``mpp`` (µm/px) and a model with ``config.mpp`` it is resampled to the
        working resolution first. The LR context comes from the same image (padding beyond it)."""
        from histosam.io.images import to_rgb_uint8

        rgb = to_rgb_uint8(image)
        self._out_shape = rgb.shape[:2]
        self._factor = 1.0
        if mpp is not None and self.working_mpp:
            from histosam.automatic import resample_rgb

            self._factor = float(mpp) / float(self.working_mpp)
            if abs(self._factor - 1) > 1e-6:
                rgb = resample_rgb(rgb, self._factor)
        self._source = ImageSource(rgb)
        self._cache.clear()

    def set_slide_region(self, slide, region: tuple[float, float, int, int], mpp: float | None = None) -> None:
        """A slide region ``(x, y, w, h)`` in level-0 pixels (``slide``: a :class:`~histosam.wsi.reader.SlideReader`
        or a path). Prompts and masks are in pixels of the region at ``mpp`` µm/px (default: the model's working
        mpp), origin at the region's top-left; HR and LR patches are read from the slide around the prompts, so the
        context extends beyond the region (white beyond the slide is padding)."""
        if isinstance(slide, str | os.PathLike):
            from histosam.wsi.reader import open_slide

            slide = open_slide(slide)
        wmpp = float(self.working_mpp or slide.mpp)
        x, y, w, h = region
        out_mpp = float(mpp) if mpp is not None else wmpp
        self._factor = out_mpp / wmpp
        s = wmpp / slide.mpp
        self._out_shape = (max(1, int(round(h * slide.mpp / out_mpp))), max(1, int(round(w * slide.mpp / out_mpp))))
        shape = (int(round(h / s)), int(round(w / s)))
        self._source = SlideSource(slide, wmpp, (x / s, y / s), shape)
        self._cache.clear()

    # ---------------------------------------------------------------- frames
    def _frames(self, hr0: tuple[int, int], need_lr: bool):
        key = (hr0, need_lr)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        g, model = self.geometry, self.model
        patches = [self._source.read(hr0[0], hr0[1], g.frame, 1)]
        if need_lr:
            lr0 = g.lr_origin(hr0)
            patches.append(self._source.read(lr0[0], lr0[1], g.frame, g.scale))
        with torch.no_grad():
            x = frames_tensor(model, patches)
            emb, skips = model.encode(x)
            feats = None
            if need_lr:
                head = model.context_decoder
                feats = (head.frame_features(emb[:1], [s[:1] for s in skips]),
                         head.frame_features(emb[1:], [s[1:] for s in skips]))
        entry = (emb, skips, feats, patches)
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def frame_patches(self, hr0: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (rgb, valid) HR and LR patches at ``hr0`` (for inspection and tests)."""
        return self._frames(tuple(hr0), True)[3] if self.context else self._frames(tuple(hr0), False)[3]

    # ---------------------------------------------------------------- predict
    def predict(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                box: np.ndarray | None = None, context: bool | None = None, extend: bool = False,
                center: tuple[float, float] | None = None) -> ContextPrediction:
        """One prompt set: ``points`` ``N×2`` (x, y), ``labels`` ``N`` (1/0), ``box`` ``[x0, y0, x1, y1]``, in the
        caller's pixels. ``center`` overrides the HR frame's centre (default: the centre of the prompts' extent).
        ``context``: use the LR field (default: the predictor's setting)."""
        if self._source is None:
            raise HistosamError("call set_image or set_slide_region first")
        use = self.context if context is None else bool(context)
        if use and self.model.context_decoder is None:
            raise HistosamError("the model has no context head")
        f = self._factor
        pts = None if points is None else np.asarray(points, np.float64).reshape(-1, 2) * f
        lbl = None if points is None else np.asarray(labels if labels is not None else np.ones(len(pts)),
                                                     np.int64).reshape(-1)
        bx = None if box is None else np.asarray(box, np.float64).reshape(4) * f
        if pts is None and bx is None:
            raise ParameterError("give points and/or a box")
        if center is not None:
            c = np.asarray(center, np.float64) * f
        else:
            xy = np.concatenate([a for a in (pts, None if bx is None else bx.reshape(2, 2)) if a is not None])
            c = 0.5 * (xy.min(0) + xy.max(0))
        g = self.geometry
        hr0 = g.hr_origin(c)
        hr_logits, lr_logits, score = self.decode(hr0, pts, lbl, bx, use, lr_mask=extend)
        mask = self._paste(hr0, hr_logits, lr_logits if (use and extend) else None)
        return ContextPrediction(mask, score, hr_logits, lr_logits, hr0, use)

    def decode(self, hr0: tuple[int, int], pts, lbl, bx, use_context: bool, lr_mask: bool = False):
        """Logits of one prompt set in working coordinates with the HR frame at ``hr0``: (HR logits, LR logits or
        ``None``, score); the LR mask only with ``lr_mask`` (the HR mask needs only the LR token)."""
        g, model = self.geometry, self.model
        emb, skips, feats, _ = self._frames(tuple(hr0), use_context)
        dev = emb.device

        def t(a):
            return None if a is None else torch.as_tensor(np.asarray(a, np.float32), device=dev)[None]

        kw = {"point_coords": t(None if pts is None else g.to_hr(pts, hr0)),
              "point_labels": None if lbl is None else torch.as_tensor(lbl, device=dev)[None],
              "boxes": None if bx is None else t(g.boxes_to(bx, hr0, "hr"))[0][None]}
        with torch.no_grad():
            if use_context:
                lr_boxes = None if bx is None else t(g.boxes_to(bx, hr0, "lr"))[0][None]
                hr, lr, iou = model.decode_context(emb[:1], [s[:1] for s in skips], emb[1:], [s[1:] for s in skips],
                                                   lr_point_coords=t(None if pts is None else g.to_lr(pts, hr0)),
                                                   lr_boxes=lr_boxes, features=feats, lr_mask=lr_mask, **kw)
                lr = None if lr is None else lr[0, 0].cpu().numpy()
                return hr[0, 0].cpu().numpy(), lr, float(iou[0, 0])
            logits, iou = model.decode_masks(emb[:1], multimask=False, **kw)
            return logits[0, 0].cpu().numpy(), None, float(iou[0, 0])

    def _paste(self, hr0, hr_logits: np.ndarray, lr_logits: np.ndarray | None) -> np.ndarray:
        g = self.geometry
        H, W = self._source.shape
        full = np.zeros((H, W), bool)
        if lr_logits is not None:
            lr0 = g.lr_origin(hr0)
            up = _upsample(lr_logits, g.frame * g.scale) > 0
            _paste_into(full, up, lr0)
        hr = _upsample(hr_logits, g.frame) > 0
        ya, yb, xa, xb = max(hr0[1], 0), min(hr0[1] + g.frame, H), max(hr0[0], 0), min(hr0[0] + g.frame, W)
        if ya < yb and xa < xb:
            full[ya:yb, xa:xb] = hr[ya - hr0[1]:yb - hr0[1], xa - hr0[0]:xb - hr0[0]]
        if self._out_shape is not None and self._out_shape != (H, W):
            from PIL import Image

            full = np.asarray(Image.fromarray(full).resize(self._out_shape[::-1], Image.NEAREST))
        return full


def _upsample(logits: np.ndarray, side: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(logits, np.float32))[None, None]
    return F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()


def _paste_into(full: np.ndarray, patch: np.ndarray, origin) -> None:
    H, W = full.shape
    x0, y0 = origin
    h, w = patch.shape
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
    if ya < yb and xa < xb:
        full[ya:yb, xa:xb] = patch[ya - y0:yb - y0, xa - x0:xb - x0]
