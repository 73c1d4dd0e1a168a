"""Batched AIS map prediction: RGB tiles → instance-decoder maps (foreground, centre and boundary distance).

This is the only neural stage of automatic instance segmentation; the tiling engine
(:mod:`histosam.tiling`) calls it through :func:`make_map_predictor`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from histosam.errors import ParameterError
from histosam.inference import preprocess as pre
from histosam.inference.runtime import autocast, prepare_for_inference, resolve_device, resolve_precision
from histosam.models.heads import contract_of
from histosam.models.sam import SegmentAnything

#: input pixels per encoder forward pass (4 frames of 1024², or 1 frame of nano's default 1472² tile)
MAX_BATCH_PIXELS = 4 * 1024 * 1024


def predict_instance_maps(model: SegmentAnything, tiles: np.ndarray, device: torch.device | str | None = None,
                          precision: str = "auto", encoder_batch: int = 4, with_classes: bool = False
                          ) -> np.ndarray:
    """Instance-decoder maps for a batch of tiles (and, ``with_classes``, the class head's probabilities).

    Args:
        model: a model with an instance decoder.
        tiles: ``B×h×w×3`` uint8 RGB. ``resize_longest_side`` models resize each tile to the frame as
            ``SamPredictor.set_image`` does; native-resolution (fully convolutional) models pad each axis to the
            next multiple of 16 (bottom/right, after normalisation).
        precision: see :func:`histosam.inference.runtime.resolve_precision`.
        encoder_batch: tiles encoded together at most; fewer when the frames are large, so that one forward
            pass holds at most ``MAX_BATCH_PIXELS`` input pixels (bounds the activation memory of big tiles).
        with_classes: append the class head's softmax probabilities (K channels, background first).
    Returns:
        float32 ``B×3×h×w`` in [0, 1]: channel 0 foreground, 1 centre distance, 2 boundary distance; with
        ``with_classes`` ``B×(3+K)×h×w``.

    The UNETR decoder of micro-sam models runs **one tile at a time**: its BatchNorm uses the statistics of the
    current batch (micro-sam parity), so batching tiles would make results depend on the batch.
    """
    if model.instance_decoder is None:
        model.decode_instances(None, [])  # raises the explanatory CheckpointError
    dev = resolve_device(device) if device is not None else model.device
    prec = resolve_precision(precision, dev)
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise ParameterError(f"tiles must be B×h×w×3 uint8, got {tiles.shape} {tiles.dtype}")
    b, h, w, _ = tiles.shape
    if model.config.resize_longest_side:
        input_size = pre.target_size(h, w, model.image_size)
        frame = (model.image_size, model.image_size)
    else:
        # fully convolutional models (nano) take any frame: each axis is padded only to a multiple of 16, so an
        # edge tile sees the image border exactly as the untiled image does (no extra padded band inside the
        # receptive field) and tiled maps equal untiled maps once the halo covers the receptive field
        input_size = (h, w)
        frame = (-(-h // 16) * 16, -(-w // 16) * 16)
    contract = contract_of(model.instance_decoder)
    per_tile_decoder = contract.batch_dependent  # batch statistics: one tile at a time (micro-sam's results)
    n_classes = 0
    if with_classes:
        if model.class_decoder is None:
            model.decode_classes(None, [])  # raises the explanatory CheckpointError
        n_classes = contract_of(model.class_decoder).channels
    out = np.empty((b, contract.channels + n_classes, h, w), dtype=np.float32)
    step = max(1, min(encoder_batch, MAX_BATCH_PIXELS // (frame[0] * frame[1])))
    for start in range(0, b, step):
        chunk = tiles[start: start + step]
        batch = torch.cat([pre.image_to_tensor(pre.resize_rgb(t, input_size), dev) for t in chunk])
        x = model.preprocess(batch, pad_to=frame)
        if dev.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(dev, prec):
            emb, skips = model.encode(x)
            if per_tile_decoder:
                maps = torch.cat([model.decode_instances(emb[i: i + 1], [s[i: i + 1] for s in skips], x[i: i + 1])
                                  for i in range(emb.shape[0])])
            else:
                maps = model.decode_instances(emb, skips, x)
            if n_classes:
                probs = torch.softmax(model.decode_classes(emb, skips, x).float(), dim=1)
                maps = torch.cat([maps.float(), probs], dim=1)
        maps = maps.float()[..., : input_size[0], : input_size[1]]
        if input_size != (h, w):
            maps = torch.nn.functional.interpolate(maps, (h, w), mode="bilinear", align_corners=False)
        out[start: start + len(chunk)] = maps.cpu().numpy()
    return out


def make_map_predictor(model: SegmentAnything, device: torch.device | str | None = None, precision: str = "auto",
                       encoder_batch: int = 4, with_classes: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A ``predict_maps(tiles_uint8 B×h×w×3) -> float32 B×C×h×w`` callable for the tiling engine (C = 3, or 3 + K
    class probabilities ``with_classes``)."""
    dev = resolve_device(device) if device is not None else model.device
    model = prepare_for_inference(model, dev)

    def predict_maps(tiles: np.ndarray) -> np.ndarray:
        return predict_instance_maps(model, tiles, dev, precision, encoder_batch, with_classes)

    return predict_maps
