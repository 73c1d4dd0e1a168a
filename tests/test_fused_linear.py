"""oneDNN packed bf16 linears (+ GELU post-op) at CPU inference, and where they must not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from histosam.models import fused_linear
from histosam.models.fused_linear import linear, packed_linear_available

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason="no oneDNN packed linear on this build")


def _layer(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(48, 80).eval()


def test_packed_equals_f_linear_in_bf16():
    layer = _layer()
    x = torch.randn(3, 7, 48)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        expected = layer(x)
        got = linear(layer, x)
        gelu = linear(layer, x, gelu=True)
    assert got.dtype == torch.bfloat16 and got.shape == (3, 7, 80)
    assert torch.equal(got, expected)  # the same bf16 GEMM, only the weight layout differs
    assert layer in fused_linear._PACKED  # ... and the packed path did run
    torch.testing.assert_close(gelu.float(), F.gelu(expected.float()), rtol=2e-2, atol=2e-2)


def test_packed_weights_follow_in_place_changes():
    layer = _layer(1)
    x = torch.randn(5, 48).bfloat16()
    with torch.inference_mode():
        first = linear(layer, x)
        layer.weight.mul_(-1.0)
        layer.bias.add_(1.0)
        second = linear(layer, x)
        torch.testing.assert_close(second.float(), F.linear(x, layer.weight.bfloat16(), layer.bias.bfloat16()).float())
    assert not torch.allclose(first.float(), second.float())


def test_plain_module_where_the_packed_path_must_not_run():
    layer = _layer(2)
    x = torch.randn(4, 48)
    with torch.inference_mode():
        torch.testing.assert_close(linear(layer, x), layer(x))  # fp32 input: exact fp32 module
    x_grad = x.bfloat16().requires_grad_(True)
    layer = layer.bfloat16()
    out = linear(layer, x_grad, gelu=True)  # autograd on: plain modules, gradients flow
    out.float().sum().backward()
    assert x_grad.grad is not None and layer.weight.grad is not None
    layer.train()
    with torch.inference_mode():
        linear(layer, x.bfloat16())  # training mode: plain module
    assert layer not in fused_linear._PACKED  # none of the three calls packed the weights
    layer.eval()
    with torch.inference_mode():
        linear(layer, x.bfloat16())
    assert layer in fused_linear._PACKED
