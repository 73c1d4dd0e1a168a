"""Deterministic random weights in MobileSAM's checkpoint layout, shared by the vit_t parity test and the script
that made its reference outputs (``make_mobile_sam_reference.py``).

The values come from numpy's ``RandomState`` (a stream numpy keeps stable across versions), key by key in sorted
order, scaled per kind of tensor so that activations stay in a sensible range: weights ~ N(0, 1/fan_in), biases
and positional tables ~ N(0, 0.1²), norm gains 1 + N(0, 0.1²), BatchNorm running variances in [0.5, 1.5],
TinyViT attention biases ~ N(0, 0.5²).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

SEED = 20261123


def _values(name: str, shape: tuple[int, ...], rng: np.random.RandomState) -> np.ndarray:
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape)
    if "attention_biases" in name:
        return rng.normal(0.0, 0.5, shape)
    norm_gain = leaf == "weight" and len(shape) == 1
    if norm_gain:  # LayerNorm / BatchNorm / LayerNorm2d gains
        return 1.0 + rng.normal(0.0, 0.1, shape)
    if leaf == "weight":
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
    return rng.normal(0.0, 0.1, shape)  # biases, running means, embeddings, positional tables


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Tensors for ``shapes`` (key -> shape), float32 except BatchNorm counters."""
    rng = np.random.RandomState(seed)
    out = {}
    for name in sorted(shapes):
        arr = _values(name, tuple(shapes[name]), rng)
        out[name] = torch.from_numpy(np.array(arr, dtype=np.int64 if arr.dtype == np.int64 else np.float32))
    return out


def digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys and raw bytes: tells whether two runs generated the same weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].numpy().tobytes())
    return h.hexdigest()


def reference_image() -> np.ndarray:
    """A 300×400 RGB uint8 crop of the bundled CC0 example (real H&E texture, not square)."""
    from pathlib import Path

    from PIL import Image

    path = Path(__file__).resolve().parents[1] / "src" / "histosam" / "data" / "cmu1_small_region_crop.png"
    return np.asarray(Image.open(path).convert("RGB"))[100:400, 50:450].copy()


#: prompts in image (x, y) pixels: a foreground point, a point pair, a box
POINT = (np.array([[210.0, 140.0]]), np.array([1]))
POINTS = (np.array([[120.0, 80.0], [300.0, 220.0]]), np.array([1, 0]))
BOX = np.array([60.0, 40.0, 260.0, 210.0])
