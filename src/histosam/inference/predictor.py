"""Interactive (prompt-based) segmentation: set an image once, predict many prompts.

Frames: prompts and returned masks are in **original image pixels**, points/boxes as (x, y). Internally each
prompt is mapped to the model's input frame:

- Models with ``resize_longest_side`` (Meta's SAM, micro-sam, PathoSAM): the whole image is resized so that
  its longest side is ``image_size`` (1024), exactly as ``SamPredictor``; one embedding per image.
- Models working at a native resolution (histosam-nano) and images larger than the frame: **tiled
  embeddings**. The image is covered by frame-sized tiles overlapping by ``tile_overlap`` pixels (the last tile
  in each axis ends at the image border). Each prompt set (one batch row: its points and box) goes to the tile
  whose inner area holds the prompts' bounding box with the largest margin; its masks are predicted in that
  tile and pasted into a full-size mask (zeros outside the tile). Tiles are encoded lazily, on first use.
  ``Prediction.tile_origin`` gives each row's tile origin (row, col); ``low_res_logits`` are in that tile's
  frame, so feed them back (``mask_input``) only with prompts that map to the same tile. A prompt set wider than
  one tile is clipped to the best tile (a warning says so). ``resize_longest_side`` models can tile too
  (``tiling=True``), at native resolution.

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

import numpy as np
import torch

from histosam.errors import HistosamError
from histosam.inference import preprocess as pre
from histosam.inference.runtime import autocast, prepare_for_inference, resolve_device, resolve_precision
from histosam.io.atomic import atomic_torch_save
from histosam.io.images import to_rgb_uint8
from histosam.models.param_cache import version_key, weights_fingerprint
from histosam.models.sam import SegmentAnything

EMBEDDING_FORMAT = "histosam-embedding-v1"


@dataclass
class Prediction:
    """Result of :meth:`Predictor.predict` (always batched: B prompt sets, C = 3 with multimask else 1).

    Attributes:
        masks: bool ``B×C×H×W`` in original image pixels.
        scores: float32 ``B×C`` predicted IoU.
        low_res_logits: float32 ``B×C×4h×4w`` (256×256 for SAM) in the model frame of each row's tile.
        tile_origin: int ``B×2`` (row, col) of the tile each row was predicted in ((0, 0) when untiled).
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    tile_origin: np.ndarray


@dataclass
class LogitsPrediction:
    """Result of :meth:`Predictor.predict_logits`: :class:`Prediction` without the full-resolution masks (for
    callers that resize or filter the logits themselves, such as automatic mask generation)."""

    scores: np.ndarray
    low_res_logits: np.ndarray
    tile_origin: np.ndarray


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


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis: stride ``tile − overlap``, the last tile ending at ``length``."""
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


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
    """

    def __init__(self, model=None, device: str | torch.device | None = None, precision: str = "auto",
                 tiling: bool | None = None, tile_overlap: int | None = None, cache_size: int = 4) -> None:
        if model is None or isinstance(model, str | os.PathLike):
            from histosam.registry.loader import load_model

            model = load_model(model, device=device)
        self.device = resolve_device(device) if device is not None else model.device
        self.model: SegmentAnything = prepare_for_inference(model, self.device)
        self.precision = resolve_precision(precision, self.device)
        self.frame = int(model.image_size)
        self.tiling = tiling
        self.tile_overlap = self.frame // 4 if tile_overlap is None else int(tile_overlap)
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
                batch_size: int = 16) -> Prediction:
        """Masks for ``B`` prompt sets (see the module docstring for frames and tiling).

        Args:
            points: ``(N, 2)`` or ``(B, N, 2)`` (x, y) pixels; labels: ``(N,)`` / ``(B, N)``, 1 = foreground,
                0 = background (default all 1).
            box: ``(4,)`` or ``(B, 4)`` ``[x0, y0, x1, y1]`` pixels.
            mask_input: ``(1, 4h, 4w)`` or ``(B, 1, 4h, 4w)`` low-resolution logits of an earlier prediction.
            multimask: return 3 candidate masks per prompt set instead of 1.
            batch_size: prompt sets decoded together (bounds memory for many prompts).
        """
        plan, out = self._plan(points, labels, box, mask_input, multimask)
        (h, w), input_size = self._sizes()
        out_masks = np.zeros((*out.scores.shape, h, w), dtype=bool)
        for tile, idx, logits in self._decode_batches(plan, out, batch_size):
            full = pre.upscale_logits(logits, self.frame, tile.input_size, (tile.h, tile.w)) > 0.0
            out_masks[idx, :, tile.row: tile.row + tile.h, tile.col: tile.col + tile.w] = full.cpu().numpy()
        if self.scale != 1.0:  # masks back to the caller's pixel grid (nearest)
            from histosam.automatic import resample_labels

            out_masks = np.stack([np.stack([resample_labels(m, input_size) for m in row]) for row in out_masks])
        return Prediction(out_masks, out.scores, out.low_res_logits, out.tile_origin)

    def predict_logits(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                       box: np.ndarray | None = None, mask_input: np.ndarray | None = None, multimask: bool = False,
                       batch_size: int = 16) -> LogitsPrediction:
        """:meth:`predict` without resizing the logits to full-resolution masks (same arguments)."""
        plan, out = self._plan(points, labels, box, mask_input, multimask)
        for _ in self._decode_batches(plan, out, batch_size):
            pass
        return out

    def _sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(working image size, size of the image given to set_image), after :meth:`set_image`."""
        if self.original_size is None or self.input_size is None:
            raise HistosamError("call set_image() first")
        return self.original_size, self.input_size

    def _plan(self, points, labels, box, mask_input, multimask: bool) -> tuple[_DecodePlan, LogitsPrediction]:
        """Prompts batched and moved to the working image, each prompt set's tile, and the empty result."""
        tiles = self._require_image()
        pts, lbl, boxes, masks, b = _batch_prompts(points, labels, box, mask_input)
        if self.scale != 1.0:  # prompts in the caller's pixels -> the resampled working image
            (oh, ow), (ih, iw) = self._sizes()
            sy, sx = oh / ih, ow / iw
            if pts is not None:
                pts = pts * np.array([sx, sy], dtype=np.float32)
            if boxes is not None:
                boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        assign = [self._choose_tile(tiles, pts, boxes, i) for i in range(b)]
        c = 3 if multimask else 1
        out = LogitsPrediction(np.zeros((b, c), np.float32), np.zeros((b, c, 0, 0), np.float32),
                               np.zeros((b, 2), np.int64))  # logits sized by the first decoded batch
        return _DecodePlan(tiles, pts, lbl, boxes, masks, assign, multimask), out

    def _decode_batches(self, plan: _DecodePlan, out: LogitsPrediction, batch_size: int):
        """Decode the prompt sets tile by tile in batches of ``batch_size``, filling ``out``; yields
        ``(tile, rows, logits)`` per batch."""
        assign, tiles = plan.assign, plan.tiles
        for t_idx in sorted(set(assign)):
            tile = tiles[t_idx]
            rows = [i for i in range(len(assign)) if assign[i] == t_idx]
            emb = self._tile_embedding(tile)
            for start in range(0, len(rows), batch_size):
                idx = rows[start: start + batch_size]
                logits, iou = self._decode(tile, emb, plan.points, plan.labels, plan.boxes, plan.masks, idx,
                                           plan.multimask)
                if out.low_res_logits.shape[-1] == 0:
                    out.low_res_logits = np.zeros((*out.scores.shape, *logits.shape[-2:]), dtype=np.float32)
                out.low_res_logits[idx] = logits.cpu().numpy()
                out.scores[idx] = iou.cpu().numpy()
                out.tile_origin[idx] = (tile.row, tile.col)
                yield tile, idx, logits

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


def _batched(value, dtype, name: str, item: tuple[int | str, ...]) -> np.ndarray:
    """``value`` as a ``dtype`` array with a leading batch axis: shape ``item`` gains one, ``(B, *item)``
    is kept. ``item`` entries are fixed sizes (int) or free sizes (str, a name for the error message)."""
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == len(item):
        arr = arr[None]
    if arr.ndim != len(item) + 1 or any(
        isinstance(want, int) and got != want for got, want in zip(arr.shape[1:], item)
    ):
        dims = ", ".join(map(str, item))
        one = f"({dims},)" if len(item) == 1 else f"({dims})"
        raise HistosamError(f"{name} must have shape {one} or (B, {dims}), got {np.shape(value)}")
    return arr


def _batch_prompts(points, labels, box, mask_input):
    """Normalise prompt arrays to batched numpy arrays; returns (points, labels, boxes, masks, B)."""
    pts = lbl = boxes = masks = None
    sizes = []
    if points is not None:
        pts = _batched(points, np.float32, "points", ("N", 2))
        lbl = np.ones(pts.shape[:2], dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if lbl.ndim == 1:
            lbl = lbl[None]
        if lbl.shape != pts.shape[:2]:
            raise HistosamError(f"labels shape {lbl.shape} does not match points {pts.shape[:2]}")
        sizes.append(pts.shape[0])
    if box is not None:
        boxes = _batched(box, np.float32, "box", (4,))
        sizes.append(boxes.shape[0])
    if mask_input is not None:
        masks = _batched(mask_input, np.float32, "mask_input", (1, "h", "w"))
        sizes.append(masks.shape[0])
    if not sizes:
        raise HistosamError("give at least one prompt: points, a box or a mask")
    b = max(sizes)
    if any(s not in (1, b) for s in sizes):
        raise HistosamError(f"prompt batch sizes differ: {sizes}")
    if pts is not None and pts.shape[0] != b:
        pts, lbl = np.repeat(pts, b, 0), np.repeat(lbl, b, 0)
    if boxes is not None and boxes.shape[0] != b:
        boxes = np.repeat(boxes, b, 0)
    if masks is not None and masks.shape[0] != b:
        masks = np.repeat(masks, b, 0)
    return pts, lbl, boxes, masks, b
