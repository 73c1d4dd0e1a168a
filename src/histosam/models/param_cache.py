"""Keys for what is derived from a model's weights: the version key under which the inference-time caches (folded,
packed weights) remember the parameters they came from, and a content fingerprint of all weights (saved
embeddings name the model that made them)."""

from __future__ import annotations

import hashlib
import weakref

import torch
from torch import nn

__all__ = ["version_key", "weights_fingerprint"]

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def version_key(*tensors: torch.Tensor | None) -> tuple:
    """Storage address and in-place version counter of each tensor (``None`` for an absent one): an equal key means
    no tensor was replaced or modified in place since, so a cache built from them is still valid."""
    return tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors)


def weights_fingerprint(module: nn.Module) -> str:
    """Content hash (blake2b, 32 hex digits) of every parameter and buffer: names, shapes, dtypes and bytes.

    Two models with equal fingerprints compute the same function whatever their names or files. Computed once per
    module (~0.5 s for ViT-B on 2 CPU cores) and recomputed only after a tensor was replaced or modified in place."""
    tensors = list(module.state_dict(keep_vars=True).items())
    key = version_key(*(t for _, t in tensors))
    cached = _FINGERPRINTS.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.blake2b(digest_size=16)
    for name, t in tensors:
        data = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
        h.update(data.reshape(-1).view(torch.uint8).numpy().data if data.numel() else b"")
    _FINGERPRINTS[module] = (key, h.hexdigest())
    return h.hexdigest()
