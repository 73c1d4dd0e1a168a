"""Inference-time bf16 ``nn.Linear`` [+ GELU] on CPU through oneDNN with pre-packed weights.

``F.linear`` under CPU autocast hands oneDNN a plain weight matrix, which it reorders into its blocked layout on
every call; a weight packed once (``mkldnn::_reorder_linear_weight``) saves that (7-14 % per ViT-B linear here), and
GELU (erf form) runs as the GEMM's post-op instead of one more pass over the activation. Outputs are bit-identical
to ``F.linear`` in bf16 (tested); GELU's post-op rounds once where ``F.gelu`` after ``F.linear`` rounds twice.

It applies only where nothing needs the plain module: eval mode, no autograd, a CPU input that is bf16 (after
autocast), oneDNN present. Packed weights live in a table keyed weakly by the module (no state on the module, no
state-dict keys) and are rebuilt whenever the weight or bias changes (tensor version counters).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.param_cache import version_key

__all__ = ["linear", "packed_linear_available"]

_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packed_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed linear ops."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def linear(module: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``module(x)``, then GELU when ``gelu``: through oneDNN's packed bf16 path where it applies (see the module
    docstring), the plain module otherwise."""
    out = _packed(module, x, gelu)
    if out is not None:
        return out
    y = module(x)
    return F.gelu(y) if gelu else y


def _packed(module: nn.Linear, x: torch.Tensor, gelu: bool) -> torch.Tensor | None:
    if module.training or torch.is_grad_enabled() or x.device.type != "cpu" or not packed_linear_available():
        return None
    if torch.is_autocast_enabled("cpu"):
        x = x.to(torch.get_autocast_dtype("cpu"))
    if x.dtype != torch.bfloat16:
        return None
    weight, bias = _weights(module)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "gelu" if gelu else "none", [],
                                             "none" if gelu else "")
    return out.view(*x.shape[:-1], out.shape[-1])


def _weights(module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    key = version_key(module.weight, module.bias)
    entry = _PACKED.get(module)
    if entry is None or entry[0] != key:
        weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach().to(torch.bfloat16), None)
        bias = module.bias.detach().to(torch.bfloat16) if module.bias is not None else None
        entry = (key, weight, bias)
        _PACKED[module] = entry
    return entry[1], entry[2]
