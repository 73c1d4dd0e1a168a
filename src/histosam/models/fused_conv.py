"""Inference-time ``Conv2d → BatchNorm2d → [GELU]`` as one oneDNN convolution on CPU.

The BatchNorm's running statistics are folded into the convolution (``w·γ/√(σ²+ε)``, ``(b−μ)·γ/√(σ²+ε)+β``,
computed in fp32) and the GELU (erf form) runs as a oneDNN post-op: one pass over the activation in place of
three. The same arithmetic up to float rounding (fp32 outputs within ~1e-6 relative of the plain modules).
Used by histosam-nano's and TinyViT's convolution blocks; it applies only when nothing needs the plain
modules: eval mode, no autograd, a 4-D CPU float32/bfloat16 input (after autocast), oneDNN present.
"""

from __future__ import annotations

import torch
from torch import nn

from histosam.models.param_cache import version_key

__all__ = ["fused_conv_available", "FoldedConv"]


def fused_conv_available() -> bool:
    """Whether this torch build has oneDNN's fused convolution op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FoldedConv:
    """Folded weights of one ``conv`` (+ optional ``norm``), cached per dtype and rebuilt whenever a parameter or
    running statistic changes (tensor version counters), and the fused forward."""

    def __init__(self) -> None:
        self._cache: dict = {}

    def _weights(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = [conv.weight, conv.bias]
        if norm is not None:
            tensors += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
        key = (dtype, version_key(*tensors))
        if self._cache.get("key") != key:
            weight = conv.weight.detach().float()
            conv_bias = conv.bias
            bias = conv_bias.detach().float() if conv_bias is not None else weight.new_zeros(weight.shape[0])
            if norm is not None:
                mean, var = norm.running_mean, norm.running_var
                assert mean is not None and var is not None  # checked in __call__
                gain = norm.weight.detach().float() / torch.sqrt(var.float() + norm.eps)
                weight = weight * gain[:, None, None, None]
                bias = (bias - mean.float()) * gain + norm.bias.detach().float()
            self._cache = {"key": key, "weight": weight.to(dtype).contiguous(), "bias": bias.to(dtype)}
        return self._cache["weight"], self._cache["bias"]

    def __call__(self, module: nn.Module, conv: nn.Conv2d, norm: nn.BatchNorm2d | None, gelu: bool,
                 x: torch.Tensor) -> torch.Tensor | None:
        """``gelu(norm(conv(x)))`` fused, or ``None`` when it does not apply (``module`` training, autograd on,
        not a 4-D CPU float32/bfloat16 input, no oneDNN, a norm without running statistics): the caller then
        runs its plain modules."""
        if (module.training or torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() != 4
                or not fused_conv_available()):
            return None
        if torch.is_autocast_enabled("cpu"):
            x = x.to(torch.get_autocast_dtype("cpu"))
        if x.dtype not in (torch.float32, torch.bfloat16) or not isinstance(conv.padding, tuple):
            return None
        if norm is not None and (norm.running_mean is None or norm.running_var is None):
            return None  # a norm without running statistics normalises by the batch: not foldable
        weight, bias = self._weights(conv, norm, x.dtype)
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            "gelu" if gelu else "none", [], "none" if gelu else "")
