"""The mask decoder's factored computations equal the plain ones (SAM's reference arithmetic)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from histosam.models.mask_decoder import MaskDecoder
from histosam.models.transformer import Attention, _softmax_short_rows


def _plain_attention(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's attention: project, split heads, softmax(q·kᵀ/√d)·v, merge, out_proj (batches broadcast)."""
    b = max(q.shape[0], k.shape[0])
    q, k, v = (x.expand(b, -1, -1) for x in (attn.q_proj(q), attn.k_proj(k), attn.v_proj(v)))
    heads = attn.num_heads

    def split(x):
        return x.reshape(b, x.shape[1], heads, -1).transpose(1, 2)

    qh, kh, vh = split(q), split(k), split(v)
    weights = torch.softmax(qh @ kh.transpose(-2, -1) / qh.shape[-1] ** 0.5, dim=-1)
    return attn.out_proj((weights @ vh).transpose(1, 2).reshape(b, q.shape[1], -1))


def _random_attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(32, num_heads=4, downsample_rate=2)  # internal 16: a 3-token side takes the factored paths
    for p in attn.parameters():
        nn.init.normal_(p, std=0.3)  # large biases, so a dropped or misplaced bias term would show
    return attn


@pytest.mark.parametrize("image_batch", [1, 3])
def test_few_queries_equals_plain_attention(image_batch):
    attn = _random_attention()
    tokens, image = torch.randn(3, 3, 32), torch.randn(image_batch, 50, 32)
    values = torch.randn(image_batch, 50, 32)
    assert attn.num_heads * tokens.shape[1] < attn.internal_dim  # the factored path applies
    with torch.no_grad():
        torch.testing.assert_close(attn(tokens, image, values), _plain_attention(attn, tokens, image, values),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image_batch", [1, 3])
def test_few_keys_equals_plain_attention_with_residual(image_batch):
    attn = _random_attention(1)
    image, tokens = torch.randn(image_batch, 50, 32), torch.randn(3, 3, 32)
    residual = torch.randn(image_batch, 50, 32)
    with torch.no_grad():
        expected = _plain_attention(attn, image, tokens, tokens)
        torch.testing.assert_close(attn(image, tokens, tokens), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attn(image, tokens, tokens, residual=residual), residual + expected,
                                   rtol=1e-5, atol=1e-5)


def test_factored_attention_gradients_equal_plain():
    attn = _random_attention(2)
    image = torch.randn(1, 40, 32, requires_grad=True)
    tokens = torch.randn(2, 3, 32, requires_grad=True)
    for fn in (lambda a, x, t: a(t, x, x), lambda a, x, t: a(x, t, t, residual=x)):
        fast = fn(attn, image, tokens).square().sum()
        plain = (fn(lambda q, k, v, residual=None: _plain_attention(attn, q, k, v)
                    + (0 if residual is None else residual), image, tokens)).square().sum()
        params = [image, tokens, *attn.parameters()]
        # the key bias does not reach the few-queries path (softmax ignores a per-row constant): its gradient is 0
        g_fast = torch.autograd.grad(fast, params, allow_unused=True)
        g_plain = torch.autograd.grad(plain, params)
        for p, gf, gp in zip(params, g_fast, g_plain):
            torch.testing.assert_close(torch.zeros_like(p) if gf is None else gf, gp, rtol=1e-4, atol=1e-4)


def test_many_tokens_keep_the_plain_path():
    """12 tokens × 4 heads ≥ 16 inner channels: factoring would cost more, the standard path runs (same result)."""
    attn = _random_attention(3)
    tokens, image = torch.randn(2, 12, 32), torch.randn(2, 50, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(tokens, image, image), _plain_attention(attn, tokens, image, image),
                                   rtol=1e-5, atol=1e-5)


def test_short_row_softmax():
    x = torch.randn(5, 6, 7) * 30
    expected = torch.softmax(x, dim=-1)
    torch.testing.assert_close(_softmax_short_rows(x.clone()), expected)
    leaf = x.clone().requires_grad_(True)
    torch.testing.assert_close(_softmax_short_rows(leaf), expected)  # autograd: not in place
    assert torch.equal(leaf, x)


def test_upscaled_masks_equal_the_upscaling_modules():
    torch.manual_seed(4)
    dec = MaskDecoder(transformer_dim=32, num_multimask_outputs=3)
    for p in dec.output_upscaling.parameters():
        nn.init.normal_(p, std=0.3)
    h, w = 5, 7
    src = torch.randn(2, h * w, 32)
    hyper = torch.randn(2, 4, 4)
    with torch.no_grad():
        up = dec.output_upscaling(src.transpose(1, 2).reshape(2, 32, h, w))
        expected = (hyper @ up.reshape(2, 4, -1)).reshape(2, 4, 4 * h, 4 * w)
        got = dec._upscaled_masks(src, hyper, (h, w))
    assert got.shape == (2, 4, 20, 28)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # a transposed pixel order would not pass: the blocks are not symmetric
    assert not torch.allclose(got, expected.transpose(-1, -2).reshape_as(got), atol=1e-3)
