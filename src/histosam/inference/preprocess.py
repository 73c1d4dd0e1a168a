"""Image and coordinate transforms between the original image and a model's input frame.

SAM's rule (``resize_longest_side``): the longest side becomes ``side`` with
``new = int(old · side / max(h, w) + 0.5)``; the resize is PIL's bilinear, antialiased when downscaling (as
``torchvision``'s resize of a PIL image, which SAM uses); points scale by ``new/old`` per axis; boxes as two
points. Models that work at native resolution use the identity.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def target_size(h: int, w: int, side: int) -> tuple[int, int]:
    """(new_h, new_w) after resizing the longest side to ``side``."""
    scale = side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bilinear resize of ``H×W×3 uint8`` to ``size`` = (h, w) (antialiased when downscaling)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``H×W×3 uint8`` → ``1×3×H×W`` float32 in 0–255."""
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device).permute(2, 0, 1)[None].float()


def scale_coords(coords: np.ndarray, original: tuple[int, int], resized: tuple[int, int]) -> np.ndarray:
    """Scale (x, y) coordinates ``(..., 2)`` from the original (h, w) frame to the resized one."""
    out = np.asarray(coords, dtype=np.float32).copy()
    out[..., 0] *= resized[1] / original[1]
    out[..., 1] *= resized[0] / original[0]
    return out


def scale_boxes(boxes: np.ndarray, original: tuple[int, int], resized: tuple[int, int]) -> np.ndarray:
    """Scale ``(..., 4)`` ``[x0, y0, x1, y1]`` boxes like two points."""
    b = np.asarray(boxes, dtype=np.float32)
    return scale_coords(b.reshape(*b.shape[:-1], 2, 2), original, resized).reshape(b.shape)


def upscale_logits(low_res: torch.Tensor, frame: int, input_size: tuple[int, int],
                   original_size: tuple[int, int]) -> torch.Tensor:
    """SAM's ``postprocess_masks``: ``B×C×h×w`` logits → frame (bilinear) → crop to ``input_size`` → resize to
    ``original_size`` (bilinear, align_corners=False). Returns float logits ``B×C×H×W``."""
    x = torch.nn.functional.interpolate(low_res, (frame, frame), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    if tuple(input_size) != tuple(original_size):
        x = torch.nn.functional.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
    return x
