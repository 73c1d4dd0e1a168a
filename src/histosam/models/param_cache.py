"""The key under which the inference-time caches (folded, packed weights) remember the parameters they came from."""

from __future__ import annotations

import torch

__all__ = ["version_key"]


def version_key(*tensors: torch.Tensor | None) -> tuple:
    """Storage address and in-place version counter of each tensor (``None`` for an absent one): an equal key means
    no tensor was replaced or modified in place since, so a cache built from them is still valid."""
    return tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors)
