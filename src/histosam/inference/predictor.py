"""Interactive (prompt-based) segmentation: set an image once, predict many prompts.

Frames: prompts and returned masks are in **original image pixels**, points/boxes as (x, y). Internally each
prompt is mapped to the model's input frame:

- Models with ``resize_longest_side`` (Meta's SAM, micro-sam, PathoSAM): the whole image is resized so that
  its longest side is ``image_size`` (1024), exactly as ``SamPredictor``; one embedding per image.
- Models working at a native resolution (histosam-nano) and images larger than the frame: **tiled
  embeddings**. The image is covered by frame-sized tiles overlapping by ``tile_overlap`` pixels (the last tile
  in each axis ends at the image border), each encoded on its own (lazily, on first use): a 1000×1000 image at
  nano's 512 frame is held as 9 tile embeddings of 64×64 cells (origins 0, 384 and 488 in each axis), not as one
  embedding. Each prompt set (one batch row: its points and box) goes to the tile whose inner area holds the
  prompts' bounding box with the largest margin; its masks are predicted in that tile and pasted into a
  full-size mask (zeros outside the tile). ``Prediction.tile_origin`` gives each row's tile origin (row, col);
  ``low_res_logits`` are in that tile's frame. A prompt set wider than one tile is clipped to the best tile (a
  warning says so). ``resize_longest_side`` models can tile too (``tiling=True``), at native resolution.
- **Prompt windows** (native-resolution models with ``config.prompt_window``, histosam-nano: 256 px): the mask
  decoder was trained on 256-px patches (32×32 embedding cells at the top-left of its positional grid), so it
  only segments prompts that sit in such a window. Each prompt set is decoded on a window of its tile's
  embedding, ``prompt_window`` px a side, aligned to the embedding stride and centred on the prompts' extent
  (points, box, and the positive region of ``mask_input`` when it fits), clamped inside the tile's image area
  (so prompts at image borders and corners get a window flush with the border); the prompt coordinates are
  shifted into the window and ``mask_input`` is cropped to it. The masks come from the window's logits (False
  outside the window); ``low_res_logits`` keep their frame-sized shape: the window's logits pasted into the
  tile's frame, :data:`OUTSIDE_LOGIT` elsewhere (``Prediction.window`` gives each window). A prompt set whose
  extent plus :data:`WINDOW_MARGIN` on both sides exceeds the window gets a larger window (rounded up to a
  quarter of the window, at most the whole frame, i.e. the behaviour without windows). Prompt sets with the same
  window size are decoded together. ``Predictor(..., prompt_window=0)`` decodes on the whole frame.
- ``mask_input`` is a frame-sized ``low_res_logits`` row of an earlier prediction. Its frame is the one that
  prediction was decoded in: ``mask_origin`` when given (``Prediction.tile_origin``), else the predictor
  recognises logits it returned itself (since the last ``set_image`` of another image), else the frame chosen
  for the new prompts. A row keeps its mask's tile while its prompts fit in it; otherwise the mask is moved into
  the new frame (the part outside the mask's frame reads :data:`OUTSIDE_LOGIT`).

Embeddings are cached by image content (a hash of the pixels), so setting the same image again is free, and
can be saved to / loaded from a file (:meth:`Predictor.save_embedding`, ``set_image(..., embedding_path=...)``);
a file is reused only for the same pixels, precision and weights (a fingerprint of every parameter, so two
checkpoints that share a name never share embeddings).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from histosam.errors import HistosamError
from histosam.inference import preprocess as pre
from histosam.inference.prompt_arrays import batch_prompts, batched, prompt_xy
from histosam.inference.results import OUTSIDE_LOGIT, LogitsPrediction, Prediction, crop_logits
from histosam.inference.runtime import autocast, prepare_for_inference, resolve_device, resolve_precision
from histosam.io.atomic import atomic_torch_save
from histosam.io.images import to_rgb_uint8
from histosam.models.param_cache import version_key, weights_fingerprint
from histosam.models.sam import SegmentAnything
from histosam.tiling.grid import tile_starts

EMBEDDING_FORMAT = "histosam-embedding-v1"
#: pixels kept between a prompt set's extent and its window's border before the window grows
WINDOW_MARGIN = 16
#: returned logits remembered for recognising a ``mask_input``'s frame
_MASK_FRAMES = 8192


@dataclass
class _DecodePlan:
    """Prompt sets batched and in working-image pixels (see :meth:`Predictor._plan`), and each set's tile."""

    tiles: list
    points: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None
    masks: np.ndarray | None
    assign: list[int]
    multimask: bool
    windows: list[tuple[int, int, int] | None]  # per row: (row, col, side) in cells of its tile, None = frame


@dataclass
class _Tile:
    row: int
    col: int
    h: int
    w: int
    input_size: tuple[int, int]
    embedding: torch.Tensor | None = None


def image_hash(rgb: np.ndarray) -> str:
    """Content key of an ``H×W×3 uint8`` image (blake2b of shape + pixels)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


class Predictor:
    """Prompt-based segmentation with a :class:`~histosam.models.sam.SegmentAnything` model.

    Args:
        model: a loaded model, a registry name or a checkpoint path; ``None`` = the embedded default.
        device: default CUDA when available.
        precision: ``"auto"`` (bf16 where fast, fp32 otherwise), ``"fp32"`` (exact, for parity) or ``"bf16"``.
            The encoder runs under this precision; prompt decoding always runs in fp32.
        tiling: ``None`` = tile only models without ``resize_longest_side`` when the image exceeds the frame.
        tile_overlap: overlap of neighbouring tiles in pixels (default a quarter of the frame).
        cache_size: images whose embeddings stay cached in memory.
        prompt_window: side in pixels of the window prompts are decoded in (native-resolution models; see the
            module docstring): ``None`` = the model's ``config.prompt_window``, 0 = the whole frame.
    """

    def __init__(self, model=None, device: str | torch.device | None = None, precision: str = "auto",
                 tiling: bool | None = None, tile_overlap: int | None = None, cache_size: int = 4,
                 prompt_window: int | None = None) -> None:
        if model is None or isinstance(model, str | os.PathLike):
            from histosam.registry.loader import load_model

            model = load_model(model, device=device)
        self.device = resolve_device(device) if device is not None else model.device
        self.model: SegmentAnything = prepare_for_inference(model, self.device)
        self.precision = resolve_precision(precision, self.device)
        self.frame = int(model.image_size)
        self.tiling = tiling
        self.tile_overlap = self.frame // 4 if tile_overlap is None else int(tile_overlap)
        self.window = self._resolve_window(prompt_window)  # px, None = decode on the whole frame
        self._mask_frames: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # returned logits -> frame
        self._cache: OrderedDict[tuple[str, tuple], list[_Tile]] = OrderedDict()
        self.cache_size = cache_size
        self._tiles: list[_Tile] | None = None
        self._rgb: np.ndarray | None = None
        self.image_key: str | None = None
        self.original_size: tuple[int, int] | None = None  # of the (possibly resampled) working image
        self.input_size: tuple[int, int] | None = None  # of the image given to set_image
        self.scale = 1.0

    # ------------------------------------------------------------------ image
    def _uses_tiles(self, h: int, w: int) -> bool:
        if self.tiling is not None:
            return self.tiling
        return (not self.model.config.resize_longest_side) and max(h, w) > self.frame

    def _layout(self, h: int, w: int) -> list[_Tile]:
        if not self._uses_tiles(h, w):
            if self.model.config.resize_longest_side:
                return [_Tile(0, 0, h, w, pre.target_size(h, w, self.frame))]
            if max(h, w) > self.frame:
                raise HistosamError("image larger than the frame with tiling disabled")
            return [_Tile(0, 0, h, w, (h, w))]
        return [_Tile(r, c, min(self.frame, h), min(self.frame, w), (min(self.frame, h), min(self.frame, w)))
                for r in tile_starts(h, self.frame, self.tile_overlap)
                for c in tile_starts(w, self.frame, self.tile_overlap)]

    def set_image(self, image: np.ndarray, embedding_path: str | os.PathLike | None = None,
                  mpp: float | None = None) -> None:
        """Set the image to segment (any array :func:`~histosam.io.images.to_rgb_uint8` accepts).

        With ``embedding_path``: load the embeddings from that file when it matches this image and model, else
        compute them (eagerly, all tiles) and write the file atomically. With ``mpp`` (µm/px of ``image``) and a
        model trained at a known resolution (``model.config.mpp``, e.g. histosam-nano at 0.25), the image is
        resampled to the model's resolution; prompts and returned masks stay in the pixels of ``image``.
        """
        from histosam.automatic import resample_rgb, rescale_factor

        rgb = to_rgb_uint8(image)
        self.input_size = rgb.shape[:2]
        self.scale = rescale_factor(mpp, self.model)
        if self.scale != 1.0:
            rgb = resample_rgb(rgb, self.scale)
        key = f"{image_hash(rgb)}:{self.model.config.name}:{self.precision}"
        if key != self.image_key:
            self._mask_frames.clear()
        self._rgb = rgb
        self.original_size = rgb.shape[:2]
        self.image_key = key
        # in memory, the weights' version too: embeddings made before an in-place change of the weights (a
        # training step) are not reused
        cache_key = (key, version_key(*self.model.state_dict(keep_vars=True).values()))
        if cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            self._tiles = self._cache[cache_key]
        else:
            self._tiles = self._layout(*rgb.shape[:2])
            self._cache[cache_key] = self._tiles
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if embedding_path is not None:
            path = Path(embedding_path)
            if path.exists() and self._load_embedding_file(path):
                return
            for tile in self._tiles:
                self._tile_embedding(tile)
            self.save_embedding(path)

    def _tile_embedding(self, tile: _Tile) -> torch.Tensor:
        if tile.embedding is None:
            assert self._rgb is not None
            crop = self._rgb[tile.row: tile.row + tile.h, tile.col: tile.col + tile.w]
            crop = pre.resize_rgb(crop, tile.input_size)
            x = self.model.preprocess(pre.image_to_tensor(crop, self.device), pad_to=self.frame)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast(self.device, self.precision):
                emb, _ = self.model.encode(x)
            tile.embedding = emb.float().contiguous()
        return tile.embedding

    def get_image_embedding(self) -> torch.Tensor:
        """The image embedding ``1×256×64×64`` float32 (untiled images; see :meth:`get_tile_embeddings`)."""
        tiles = self._require_image()
        if len(tiles) != 1:
            raise HistosamError(f"the image is tiled into {len(tiles)} embeddings; use get_tile_embeddings()")
        return self._tile_embedding(tiles[0])

    def get_tile_embeddings(self) -> list[tuple[tuple[int, int], torch.Tensor]]:
        """``[((row, col) origin, 1×256×h×w embedding), ...]`` for every tile (computing missing ones)."""
        return [((t.row, t.col), self._tile_embedding(t)) for t in self._require_image()]

    def _require_image(self) -> list[_Tile]:
        if self._tiles is None:
            raise HistosamError("call set_image() before predicting")
        return self._tiles

    def save_embedding(self, path: str | os.PathLike) -> Path:
        """Write all tile embeddings with the image key and the weights' fingerprint, atomically."""
        tiles = self._require_image()
        payload = {"format": EMBEDDING_FORMAT, "key": self.image_key, "weights": weights_fingerprint(self.model),
                   "frame": self.frame,
                   "tiles": [dict(row=t.row, col=t.col, h=t.h, w=t.w, input_size=t.input_size,
                                  embedding=self._tile_embedding(t).cpu()) for t in tiles]}
        return atomic_torch_save(payload, path)

    def _load_embedding_file(self, path: Path) -> bool:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache file is recomputed
            warnings.warn(f"embedding file {path} is unreadable; recomputing", stacklevel=3)
            return False
        if not isinstance(payload, dict) or payload.get("format") != EMBEDDING_FORMAT or \
                payload.get("key") != self.image_key or len(payload.get("tiles", [])) != len(self._tiles or []) or \
                payload.get("weights") != weights_fingerprint(self.model):
            warnings.warn(f"embedding file {path} belongs to another image or model; recomputing", stacklevel=3)
            return False
        for tile, saved in zip(self._tiles or [], payload["tiles"]):
            tile.embedding = saved["embedding"].to(self.device)
        return True

    # ---------------------------------------------------------------- prompts
    def predict(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                box: np.ndarray | None = None, mask_input: np.ndarray | None = None, multimask: bool = False,
                batch_size: int = 16, mask_origin: np.ndarray | None = None) -> Prediction:
        """Masks for ``B`` prompt sets (see the module docstring for frames, tiles and windows).

        Args:
            points: ``(N, 2)`` or ``(B, N, 2)`` (x, y) pixels; labels: ``(N,)`` / ``(B, N)``, 1 = foreground,
                0 = background, −1 = ignored (default all 1).
            box: ``(4,)`` or ``(B, 4)`` ``[x0, y0, x1, y1]`` pixels.
            mask_input: ``(1, 4h, 4w)`` or ``(B, 1, 4h, 4w)`` low-resolution logits of an earlier prediction
                (a ``low_res_logits`` row: frame-sized).
            multimask: return 3 candidate masks per prompt set instead of 1.
            batch_size: prompt sets decoded together (bounds memory for many prompts).
            mask_origin: ``(2,)`` or ``(B, 2)`` ``tile_origin`` of the prediction ``mask_input`` comes from
                (default: recognised, see the module docstring).
        """
        plan, out = self._plan(points, labels, box, mask_input, multimask, mask_origin)
        (h, w), input_size = self._sizes()
        out_masks = np.zeros((*out.scores.shape, h, w), dtype=bool)
        stride = self.model.embedding_stride
        for tile, idx, logits, windows in self._decode_batches(plan, out, batch_size):
            if windows is None:
                full = pre.upscale_logits(logits, self.frame, tile.input_size, (tile.h, tile.w)) > 0.0
                out_masks[idx, :, tile.row: tile.row + tile.h, tile.col: tile.col + tile.w] = full.cpu().numpy()
                continue
            side = windows[0][2] * stride
            win_masks = (torch.nn.functional.interpolate(logits, (side, side), mode="bilinear", align_corners=False)
                    > 0.0).cpu().numpy()
            for k, (i, (wr, wc, _)) in enumerate(zip(idx, windows)):
                r0, c0 = wr * stride, wc * stride  # in the tile; the window may reach into the frame's padding
                r1, c1 = min(r0 + side, tile.h), min(c0 + side, tile.w)
                out_masks[i, :, tile.row + r0: tile.row + r1, tile.col + c0: tile.col + c1] = \
                    win_masks[k, :, : r1 - r0, : c1 - c0]
        if self.scale != 1.0:  # masks back to the caller's pixel grid (nearest)
            from histosam.automatic import resample_labels

            out_masks = np.stack([np.stack([resample_labels(m, input_size) for m in row]) for row in out_masks])
        return Prediction(out_masks, out.scores, out.low_res_logits, out.tile_origin, out.window)

    def predict_logits(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                       box: np.ndarray | None = None, mask_input: np.ndarray | None = None, multimask: bool = False,
                       batch_size: int = 16, mask_origin: np.ndarray | None = None) -> LogitsPrediction:
        """:meth:`predict` without resizing the logits to full-resolution masks (same arguments)."""
        plan, out = self._plan(points, labels, box, mask_input, multimask, mask_origin)
        for _ in self._decode_batches(plan, out, batch_size):
            pass
        return out

    def mask_prompt(self, mask: np.ndarray, points: np.ndarray | None = None, box: np.ndarray | None = None,
                    eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """An earlier mask as a mask prompt: ``(mask_input (1, 4h, 4w), mask_origin (2,))`` for :meth:`predict`.

        ``mask``: bool ``H×W`` in the pixels given to :meth:`set_image` (e.g. the mask a previous
        ``histosam predict`` wrote, or a QuPath annotation). It is put in the frame of the tile that its extent
        and the new ``points``/``box`` go to, area-averaged onto the low-resolution grid, clipped to
        ``[eps, 1 − eps]`` and turned into logits (as micro-sam turns a mask into a mask prompt)."""
        import torch.nn.functional as F

        tiles = self._require_image()
        (oh, ow), (ih, iw) = self._sizes()
        m = np.asarray(mask)
        if m.shape != (ih, iw):
            raise HistosamError(f"the mask is {m.shape[1] if m.ndim > 1 else '?'}×{m.shape[0]} px, the image "
                                f"{iw}×{ih}: give a mask of the image's size")
        m = m.astype(bool)
        if self.scale != 1.0:
            from histosam.tasks.nuclei import resample_labels

            m = resample_labels(m.astype(np.uint8), (oh, ow)) > 0
        coords = []
        rows, cols = np.nonzero(m)
        if rows.size:
            coords.append(np.array([[cols.min(), rows.min()], [cols.max() + 1, rows.max() + 1]], np.float32))
        sx, sy = ow / iw, oh / ih
        if points is not None:
            coords.append(np.asarray(points, np.float32).reshape(-1, 2) * np.array([sx, sy], np.float32))
        if box is not None:
            coords.append(np.asarray(box, np.float32).reshape(-1, 2) * np.array([sx, sy], np.float32))
        k = self._choose_tile(tiles, np.concatenate(coords)[None], None, 0) if coords else 0
        tile = tiles[k]
        crop = torch.from_numpy(m[tile.row: tile.row + tile.h, tile.col: tile.col + tile.w].astype(np.float32))
        crop = crop[None, None]
        if tuple(tile.input_size) != (tile.h, tile.w):
            crop = F.interpolate(crop, size=tuple(tile.input_size), mode="bilinear", align_corners=False)
        frame = torch.zeros(1, 1, self.frame, self.frame)
        frame[..., : crop.shape[-2], : crop.shape[-1]] = crop
        size = tuple(cast(Any, self.model.prompt_encoder).mask_input_size)
        low = F.adaptive_avg_pool2d(frame, size).clamp(eps, 1 - eps)
        return torch.log(low / (1 - low))[0].numpy().astype(np.float32), np.array([tile.row, tile.col], np.int64)

    def _sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(working image size, size of the image given to set_image), after :meth:`set_image`."""
        if self.original_size is None or self.input_size is None:
            raise HistosamError("call set_image() first")
        return self.original_size, self.input_size

    def _resolve_window(self, prompt_window: int | None) -> int | None:
        """Window side in input-frame pixels, or None (decode on the whole frame)."""
        cfg = self.model.config
        if cfg.resize_longest_side:
            return None
        side = getattr(cfg, "prompt_window", None) if prompt_window is None else prompt_window
        if not side:
            return None
        side = int(side)
        stride = self.model.embedding_stride
        if side < 0 or side % stride:
            raise HistosamError(f"prompt_window must be a positive multiple of the embedding stride ({stride} px), "
                                f"got {side}")
        return side if side < self.frame else None

    def _plan(self, points, labels, box, mask_input, multimask: bool,
              mask_origin=None) -> tuple[_DecodePlan, LogitsPrediction]:
        """Prompts batched and moved to the working image; each prompt set's tile and window (and its
        ``mask_input`` moved into that tile's frame); the empty result."""
        tiles = self._require_image()
        pts, lbl, boxes, masks, b = batch_prompts(points, labels, box, mask_input)
        want = tuple(self.model.prompt_encoder.mask_input_size)  # type: ignore[arg-type]
        if masks is not None and tuple(masks.shape[-2:]) != want:
            raise HistosamError(f"mask_input must be {want[0]}×{want[1]} low-res logits of the frame (a "
                                f"low_res_logits row), got {masks.shape[-2]}×{masks.shape[-1]}")
        if self.scale != 1.0:  # prompts in the caller's pixels -> the resampled working image
            (oh, ow), (ih, iw) = self._sizes()
            sy, sx = oh / ih, ow / iw
            if pts is not None:
                pts = pts * np.array([sx, sy], dtype=np.float32)
            if boxes is not None:
                boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        origins = self._mask_origins(masks, mask_origin, b)
        assign = []
        for i in range(b):
            origin = origins[i]
            keep = self._tile_of_origin(tiles, origin) if origin is not None else None
            if keep is None or not self._fits(tiles[keep], pts, lbl, boxes, i):
                keep = self._choose_tile(tiles, pts, boxes, i)
            assign.append(keep)
        if masks is not None:
            masks = self._masks_to_tiles(masks, origins, [tiles[t] for t in assign])
        windows: list[tuple[int, int, int] | None] = [None] * b
        if self.window is not None:
            windows = [self._place_window(tiles[assign[i]], pts, lbl, boxes, masks, i) for i in range(b)]
        c = 3 if multimask else 1
        out = LogitsPrediction(np.zeros((b, c), np.float32), np.zeros((b, c, 0, 0), np.float32),
                               np.zeros((b, 2), np.int64), np.zeros((b, 4), np.int64))  # logits sized later
        return _DecodePlan(tiles, pts, lbl, boxes, masks, assign, multimask, windows), out

    # ----------------------------------------------------------- mask frames
    def _mask_origins(self, masks, mask_origin, b: int) -> list[tuple[int, int] | None]:
        """Frame origin (row, col) of each row's ``mask_input``: given, recognised, or None (unknown)."""
        if masks is None:
            return [None] * b
        if mask_origin is not None:
            org = batched(mask_origin, np.int64, "mask_origin", (2,))
            if org.shape[0] not in (1, b):
                raise HistosamError(f"mask_origin has {org.shape[0]} rows for {b} prompt sets")
            org = np.repeat(org, b, 0) if org.shape[0] != b else org
            return [(int(r), int(c)) for r, c in org]
        return [self._mask_frames.get(_logits_key(masks[i, 0])) for i in range(b)]

    def _remember_frames(self, logits: np.ndarray, origin: tuple[int, int]) -> None:
        for row in logits:
            for m in row:
                self._mask_frames[_logits_key(m)] = origin
        while len(self._mask_frames) > _MASK_FRAMES:
            self._mask_frames.popitem(last=False)

    @staticmethod
    def _tile_of_origin(tiles: list[_Tile], origin: tuple[int, int]) -> int | None:
        for k, t in enumerate(tiles):
            if (t.row, t.col) == tuple(origin):
                return k
        return None

    @staticmethod
    def _fits(tile: _Tile, pts, lbl, boxes, i: int) -> bool:
        xy = prompt_xy(pts, lbl, boxes, i)
        if xy is None:
            return True
        return bool(xy[:, 0].min() >= tile.col and xy[:, 1].min() >= tile.row and
                    xy[:, 0].max() <= tile.col + tile.w and xy[:, 1].max() <= tile.row + tile.h)

    def _masks_to_tiles(self, masks: np.ndarray, origins, tiles: list[_Tile]) -> np.ndarray:
        """Move each row's mask from its frame (``origins``; None = already the row's tile) into its tile's."""
        out = masks
        for i, (org, tile) in enumerate(zip(origins, tiles)):
            if org is None or tuple(org) == (tile.row, tile.col):
                continue
            if out is masks:
                out = masks.copy()
            scale = masks.shape[-1] / self.frame  # low-res values per frame pixel (native frames only)
            dr = int(round((tile.row - org[0]) * scale))
            dc = int(round((tile.col - org[1]) * scale))
            out[i] = crop_logits(masks[i], dr, dc, masks.shape[-2], masks.shape[-1])
        return out

    # --------------------------------------------------------------- windows
    def _place_window(self, tile: _Tile, pts, lbl, boxes, masks, i: int) -> tuple[int, int, int] | None:
        """(row, col, side) in embedding cells of ``tile``: the window a prompt set is decoded in."""
        stride = self.model.embedding_stride
        cells = self.frame // stride
        assert self.window is not None  # windows are placed only when the predictor decodes in windows
        base = self.window // stride
        xy = prompt_xy(pts, lbl, boxes, i)
        region = None
        if masks is not None:  # the mask's positive region, in tile pixels
            pos = np.nonzero(masks[i, 0] > 0.0)
            if pos[0].size:
                q = self.frame / masks.shape[-1]
                region = np.array([[pos[1].min() * q, pos[0].min() * q], [(pos[1].max() + 1) * q,
                                                                          (pos[0].max() + 1) * q]], np.float32)
        if xy is None:
            if region is None:
                return None  # nothing to place a window on: the whole frame
            lo, hi = region[0], region[1]
        else:
            xy = xy - np.array([tile.col, tile.row], np.float32)
            lo, hi = xy.min(axis=0), xy.max(axis=0) + 1.0  # a point covers its pixel
        span = float(max(hi - lo)) + 2 * WINDOW_MARGIN
        if span <= base * stride:
            side = base
        else:
            step = max(base // 4, 1)
            side = min(int(np.ceil(span / (step * stride))) * step, cells)
        if region is not None and xy is not None:  # centre on prompts ∪ mask when that still fits the window
            lo2, hi2 = np.minimum(lo, region[0]), np.maximum(hi, region[1])
            if float(max(hi2 - lo2)) + 2 * WINDOW_MARGIN <= side * stride:
                lo, hi = lo2, hi2
        rows_valid = min(-(-tile.h // stride), cells)  # cells holding image pixels
        cols_valid = min(-(-tile.w // stride), cells)
        centre = (lo + hi) / 2.0 / stride  # (x, y) in cells
        r = int(np.clip(np.floor(centre[1] - side / 2 + 0.5), 0, max(min(rows_valid, cells) - side, 0)))
        c = int(np.clip(np.floor(centre[0] - side / 2 + 0.5), 0, max(min(cols_valid, cells) - side, 0)))
        return r, c, side

    def _decode_batches(self, plan: _DecodePlan, out: LogitsPrediction, batch_size: int):
        """Decode the prompt sets tile by tile (and window size by window size) in batches of ``batch_size``,
        filling ``out``; yields ``(tile, rows, logits, windows)`` per batch: the frame's logits and None, or the
        windows' logits and their ``(row, col, side)``."""
        assign, tiles = plan.assign, plan.tiles
        stride = self.model.embedding_stride
        groups: dict[tuple[int, int], list[int]] = {}
        for i, t_idx in enumerate(assign):
            win = plan.windows[i]
            groups.setdefault((t_idx, 0 if win is None else win[2]), []).append(i)
        for (t_idx, _), rows in sorted(groups.items()):
            tile = tiles[t_idx]
            emb = self._tile_embedding(tile)
            for start in range(0, len(rows), batch_size):
                idx = rows[start: start + batch_size]
                wins = [plan.windows[i] for i in idx]
                assert out.window is not None
                if wins[0] is None:
                    logits, iou = self._decode(tile, emb, plan.points, plan.labels, plan.boxes, plan.masks, idx,
                                               plan.multimask)
                    frame_logits = logits.cpu().numpy()
                    out.window[idx] = (tile.row, tile.col, self.frame, self.frame)
                else:
                    placed = [w for w in wins if w is not None]  # a group shares one window side: all placed
                    logits, iou = self._decode_windows(tile, emb, plan, idx, placed)
                    frame_logits = self._paste(logits.cpu().numpy(), placed, emb.shape[-2:])
                    out.window[idx] = [(tile.row + r * stride, tile.col + c * stride, sd * stride, sd * stride)
                                       for r, c, sd in placed]
                if out.low_res_logits.shape[-1] == 0:
                    out.low_res_logits = np.zeros((*out.scores.shape, *frame_logits.shape[-2:]), dtype=np.float32)
                out.low_res_logits[idx] = frame_logits
                out.scores[idx] = iou.cpu().numpy()
                out.tile_origin[idx] = (tile.row, tile.col)
                self._remember_frames(frame_logits, (tile.row, tile.col))
                yield tile, idx, logits, (None if wins[0] is None else wins)

    def _paste(self, logits: np.ndarray, wins, emb_size) -> np.ndarray:
        """Window logits ``B×C×4s×4s`` → frame-sized low-res logits, :data:`OUTSIDE_LOGIT` outside the windows."""
        q = logits.shape[-1] // wins[0][2]  # low-res values per cell (4)
        out = np.full((*logits.shape[:2], q * emb_size[0], q * emb_size[1]), OUTSIDE_LOGIT, np.float32)
        for k, (r, c, s) in enumerate(wins):
            out[k, :, q * r: q * (r + s), q * c: q * (c + s)] = logits[k]
        return out

    def _decode_windows(self, tile: _Tile, emb: torch.Tensor, plan: _DecodePlan, idx: list[int],
                        wins: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode rows on their windows of ``emb`` (all of one side), prompts shifted into the windows."""
        dev = self.device
        stride = self.model.embedding_stride
        side = wins[0][2]
        if side == emb.shape[-1] and side == emb.shape[-2]:
            window_emb = emb  # the whole frame: shared by every row
        else:
            window_emb = torch.cat([emb[:, :, r: r + side, c: c + side] for r, c, _ in wins])
        shift = np.array([(tile.col + c * stride, tile.row + r * stride) for r, c, _ in wins], np.float32)
        kwargs = {}
        if plan.points is not None:
            assert plan.labels is not None  # points always come with labels (_batch_prompts)
            kwargs["point_coords"] = torch.from_numpy(plan.points[idx] - shift[:, None, :]).to(dev)
            kwargs["point_labels"] = torch.from_numpy(plan.labels[idx]).to(dev)
        if plan.boxes is not None:
            kwargs["boxes"] = torch.from_numpy(plan.boxes[idx] - np.tile(shift, 2)).to(dev)
        if plan.masks is not None:
            q = plan.masks.shape[-1] // emb.shape[-1]
            crops = np.stack([crop_logits(plan.masks[i], q * r, q * c, q * side, q * side) for i, (r, c, _) in
                              zip(idx, wins)])
            kwargs["mask_input"] = torch.from_numpy(crops).to(dev)
        with torch.inference_mode():
            return self.model.decode_masks(window_emb, multimask=plan.multimask, **kwargs)

    def _choose_tile(self, tiles: list[_Tile], pts, boxes, i: int) -> int:
        if len(tiles) == 1:
            return 0
        coords = []
        if pts is not None:
            coords.append(pts[i])
        if boxes is not None:
            coords.append(boxes[i].reshape(2, 2))
        if not coords:
            return 0
        xy = np.concatenate(coords, axis=0)
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        margins = [min(x0 - t.col, y0 - t.row, t.col + t.w - x1, t.row + t.h - y1) for t in tiles]
        best = int(np.argmax(margins))
        if margins[best] < 0:
            warnings.warn("a prompt set spans more than one tile; its mask is limited to the best tile", stacklevel=3)
        return best

    def _decode(self, tile: _Tile, emb: torch.Tensor, pts, lbl, boxes, masks, idx: list[int],
                multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        size = (tile.h, tile.w)
        kwargs = {}
        if pts is not None:
            local = pts[idx] - np.array([tile.col, tile.row], dtype=np.float32)
            kwargs["point_coords"] = torch.from_numpy(pre.scale_coords(local, size, tile.input_size)).to(dev)
            kwargs["point_labels"] = torch.from_numpy(lbl[idx]).to(dev)
        if boxes is not None:
            local = boxes[idx] - np.array([tile.col, tile.row] * 2, dtype=np.float32)
            kwargs["boxes"] = torch.from_numpy(pre.scale_boxes(local, size, tile.input_size)).to(dev)
        if masks is not None:
            kwargs["mask_input"] = torch.from_numpy(masks[idx]).to(dev)
        with torch.inference_mode():
            return self.model.decode_masks(emb, multimask=multimask, **kwargs)


def _logits_key(logits: np.ndarray) -> bytes:
    """Content key of one returned low-res logits map (a strided sample: cheap, and distinct predictions
    differ in it)."""
    a = np.ascontiguousarray(np.asarray(logits, dtype=np.float32)[..., ::4, ::4])
    return hashlib.blake2b(a.tobytes() + str(np.shape(logits)[-2:]).encode(), digest_size=16).digest()
