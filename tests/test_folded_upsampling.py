"""The UNETR decoder's ``ConvTranspose2d(2, 2) → Conv3×3`` pairs folded into one coarse-grid convolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from histosam.models.folded_upsampling import FoldedUpConv, fold_transposed_conv3x3
from histosam.models.unetr import Deconv2DBlock


def _random_pair(cin: int, cout: int, seed: int = 0) -> tuple[nn.ConvTranspose2d, nn.Conv2d]:
    torch.manual_seed(seed)
    up, conv = nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.Conv2d(cout, cout, 3, padding=1)
    for p in (*up.parameters(), *conv.parameters()):
        nn.init.normal_(p)  # biases as large as the weights, so border errors would show
    return up, conv


@pytest.mark.parametrize("cin,cout,h,w,batch", [(3, 2, 1, 1, 1), (8, 6, 2, 3, 2), (5, 7, 4, 5, 1), (16, 16, 7, 3, 2)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_folded_pair_equals_the_two_layers(cin, cout, h, w, batch, memory_format):
    up, conv = _random_pair(cin, cout)
    x = torch.randn(batch, cin, h, w).contiguous(memory_format=memory_format)
    with torch.no_grad():
        expected = conv(up(x))
        got = FoldedUpConv()(up, conv, x)
    assert got.shape == expected.shape == (batch, cout, 2 * h, 2 * w)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_bias_only_input_gives_the_border_table():
    """x = 0: the result is the bias alone, whose border values the 3×3 table holds (corners, edges, interior)."""
    up, conv = _random_pair(4, 3)
    x = torch.zeros(1, 4, 3, 4)
    with torch.no_grad():
        got = FoldedUpConv()(up, conv, x)[0]
        table = fold_transposed_conv3x3(up, conv)[2]
        expected = conv(up(x))[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, 0, 0], table[:, 0, 0])
    torch.testing.assert_close(got[:, -1, 3], table[:, 2, 1])
    torch.testing.assert_close(got[:, 2, 3], table[:, 1, 1])
    # interior pixels all share one value, and no border value equals it (the correction is not a no-op)
    assert torch.allclose(got[:, 1:-1, 1:-1], table[:, 1, 1, None, None].expand_as(got[:, 1:-1, 1:-1]))
    assert not torch.allclose(got[:, 0, 1], table[:, 1, 1])


def test_block_uses_the_fold_at_inference_and_follows_weight_changes():
    block = Deconv2DBlock(6, 4).eval()
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.block(x), rtol=1e-5, atol=1e-5)
        assert block._folded._cache, "the folded path did not run"
        block.block[1].block.weight.mul_(2.0)  # an in-place change must rebuild the folded weights
        torch.testing.assert_close(block(x), block.block(x), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_close_to_fp32():
    up, conv = _random_pair(32, 16)
    x = torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        expected = conv(up(x))
        with torch.autocast("cpu", torch.bfloat16):
            got = FoldedUpConv()(up, conv, x)
    assert got.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(got.float().flatten(), expected.flatten(), dim=0)
    assert cos > 0.9999


def test_training_and_autograd_keep_the_plain_layers():
    block = Deconv2DBlock(6, 4)
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    block(x).sum().backward()  # training mode: plain modules, gradients flow
    assert x.grad is not None and block.block[0].block.weight.grad is not None
    assert not block._folded._cache
    block.eval()
    block(x).sum().backward()  # eval with autograd on: still the plain modules
    assert not block._folded._cache


def test_interpolate_up_commutes_conv_and_upsampling():
    """``InterpolateUp`` runs its 1×1 conv before the bilinear ×2; equal to the documented order."""
    from histosam.models.unetr import InterpolateUp

    torch.manual_seed(1)
    up = InterpolateUp(5, 3)
    nn.init.normal_(up.conv.bias)
    x = torch.randn(2, 5, 4, 7)
    expected = up.conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    torch.testing.assert_close(up(x), expected, rtol=1e-5, atol=1e-5)
