"""histosam-nano's fused inference convolutions (BatchNorm folded, GELU as a oneDNN post-op) equal the plain
modules, follow parameter changes, and leave training untouched."""

import pytest
import torch
from torch import nn

from histosam.models.fused_conv import fused_conv_available
from histosam.models.nano import ConvNormAct, conv_bn

pytestmark = pytest.mark.skipif(not fused_conv_available(), reason="no oneDNN convolution on this build")


def _randomise(block: ConvNormAct) -> ConvNormAct:
    torch.manual_seed(0)
    for p in block.parameters():
        nn.init.normal_(p, 0.0, 0.5)
    for m in block:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return block.eval()


def _plain(block: ConvNormAct, x: torch.Tensor) -> torch.Tensor:
    return nn.Sequential.forward(block, x)


BLOCKS = [
    lambda: conv_bn(8, 16, 3, 2),  # strided 3×3
    lambda: conv_bn(8, 8, 3, groups=8, dilation=2),  # dilated depthwise
    lambda: conv_bn(8, 12, 1, act=False),  # projection without activation
    lambda: ConvNormAct(nn.Conv2d(8, 8, 3, padding=1, groups=8), None, act=True),  # conv bias, no norm
]


@pytest.mark.parametrize("make", BLOCKS)
def test_fused_equals_plain_fp32_and_bf16(make):
    block = _randomise(make())
    x = torch.randn(2, 8, 23, 30).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref, out = _plain(block, x), block(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref16, out16 = _plain(block, x), block(x)
        assert out16.dtype == torch.bfloat16
        cos = torch.nn.functional.cosine_similarity(out16.float().ravel(), ref.ravel(), dim=0)
        assert cos > 0.999 and torch.allclose(out16.float(), ref16.float(), atol=0.05 * ref.abs().max().item())


def test_folded_weights_follow_parameter_changes():
    block = _randomise(conv_bn(4, 4, 3))
    x = torch.randn(1, 4, 9, 9)
    with torch.inference_mode():
        before = block(x)
    block[1].running_mean.add_(1.0)  # in place: the version counter moves
    with torch.no_grad():
        block[0].weight.mul_(2.0)
    with torch.inference_mode():
        after, ref = block(x), _plain(block, x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, rtol=1e-5, atol=1e-5)


def test_training_and_autograd_use_the_plain_modules():
    block = _randomise(conv_bn(4, 6, 3))
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    block.eval()
    block(x).sum().backward()  # grad enabled: plain path, gradients reach input and weights
    assert x.grad is not None and block[0].weight.grad is not None
    block.train()
    running = block[1].running_mean.clone()
    with torch.no_grad():
        block(x)
    assert not torch.equal(running, block[1].running_mean)  # train mode updates the statistics (plain path)
    assert list(block.state_dict()) == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                        "1.num_batches_tracked"]
