"""MobileSAM ``vit_t`` (TinyViT-5M) encoder: checkpoint key layout, shapes, windowing, and loading.

Numerical parity with MobileSAM's own stack is in ``test_parity_mobile_sam.py``; the expected keys/shapes below
are written out from MobileSAM's
``build_sam_vit_t`` settings (embed dims 64/128/160/320, depths 2/2/6/2, heads 2/4/5/10, windows 7/7/14/7).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import histosam
from histosam.errors import CheckpointError
from histosam.models.build import build_model
from histosam.models.tiny_vit import TinyViTBlock, bias_index
from histosam.registry import formats


def _conv_bn(keys: dict, prefix: str, cin: int, cout: int, k: int, depthwise: bool = False) -> None:
    keys[f"{prefix}.c.weight"] = (cout, 1 if depthwise else cin, k, k)
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.bn.{name}"] = (cout,)
    keys[f"{prefix}.bn.num_batches_tracked"] = ()


def mobile_sam_encoder_keys() -> dict[str, tuple[int, ...]]:
    """``image_encoder.*`` keys and shapes of MobileSAM's checkpoint (without ``attention_bias_idxs``)."""
    keys: dict[str, tuple[int, ...]] = {}
    _conv_bn(keys, "patch_embed.seq.0", 3, 32, 3)
    _conv_bn(keys, "patch_embed.seq.2", 32, 64, 3)
    for b in range(2):
        p = f"layers.0.blocks.{b}"
        _conv_bn(keys, f"{p}.conv1", 64, 256, 1)
        _conv_bn(keys, f"{p}.conv2", 256, 256, 3, depthwise=True)
        _conv_bn(keys, f"{p}.conv3", 256, 64, 1)
    dims, depths, heads, windows = [64, 128, 160, 320], [2, 2, 6, 2], [2, 4, 5, 10], [7, 7, 14, 7]
    for i in range(3):
        p = f"layers.{i}.downsample"
        _conv_bn(keys, f"{p}.conv1", dims[i], dims[i + 1], 1)
        _conv_bn(keys, f"{p}.conv2", dims[i + 1], dims[i + 1], 3, depthwise=True)
        _conv_bn(keys, f"{p}.conv3", dims[i + 1], dims[i + 1], 1)
    for i in (1, 2, 3):
        d = dims[i]
        for b in range(depths[i]):
            p = f"layers.{i}.blocks.{b}"
            keys[f"{p}.attn.attention_biases"] = (heads[i], windows[i] ** 2)
            keys[f"{p}.attn.norm.weight"] = keys[f"{p}.attn.norm.bias"] = (d,)
            keys[f"{p}.attn.qkv.weight"], keys[f"{p}.attn.qkv.bias"] = (3 * d, d), (3 * d,)
            keys[f"{p}.attn.proj.weight"], keys[f"{p}.attn.proj.bias"] = (d, d), (d,)
            keys[f"{p}.mlp.norm.weight"] = keys[f"{p}.mlp.norm.bias"] = (d,)
            keys[f"{p}.mlp.fc1.weight"], keys[f"{p}.mlp.fc1.bias"] = (4 * d, d), (4 * d,)
            keys[f"{p}.mlp.fc2.weight"], keys[f"{p}.mlp.fc2.bias"] = (d, 4 * d), (d,)
            _conv_bn(keys, f"{p}.local_conv", d, d, 3, depthwise=True)
    keys["norm_head.weight"] = keys["norm_head.bias"] = (320,)
    keys["head.weight"], keys["head.bias"] = (1000, 320), (1000,)
    keys["neck.0.weight"] = (256, 320, 1, 1)
    keys["neck.1.weight"] = keys["neck.1.bias"] = (256,)
    keys["neck.2.weight"] = (256, 256, 3, 3)
    keys["neck.3.weight"] = keys["neck.3.bias"] = (256,)
    return keys


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.3 if "attention_biases" in name else 0.05))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return _randomise(build_model("vit_t", img_size=256))


def test_state_dict_layout_matches_mobile_sam():
    model = build_model("vit_t")
    ours = {k: tuple(v.shape) for k, v in model.image_encoder.state_dict().items()}
    expected = mobile_sam_encoder_keys()
    assert sorted(set(ours) - set(expected)) == [] and sorted(set(expected) - set(ours)) == []
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
    assert formats.identify_architecture({f"image_encoder.{k}": v for k, v in
                                          model.image_encoder.state_dict().items()}) == ("vit_t", {})
    n = sum(p.numel() for n, p in model.image_encoder.named_parameters() if not n.startswith(("head.", "norm_head.")))
    assert 5_700_000 < n < 5_800_000  # TinyViT-5M trunk + neck (MobileSAM: "5.78M")


def test_bias_index_is_first_appearance_enumeration():
    for window in (2, 3, 7):
        points = list(itertools.product(range(window), range(window)))
        seen: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(seen.setdefault(off, len(seen)))
        assert torch.equal(bias_index(window), torch.tensor(idxs).view(len(points), len(points)))


def test_forward_shapes(small):
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        emb, skips = small.image_encoder.forward_features(x)
    assert emb.shape == (2, 256, 16, 16) and skips == []
    assert torch.isfinite(emb).all()
    # the neck ends in a LayerNorm2d: per-pixel channel statistics follow its affine parameters
    with torch.no_grad():
        one = small.image_encoder(x[:1])
    torch.testing.assert_close(one, emb[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_forward_1024():
    model = build_model("vit_t").eval()
    with torch.no_grad():
        assert model.image_encoder(torch.randn(1, 3, 1024, 1024)).shape == (1, 256, 64, 64)


def _naive_block_attention(block: TinyViTBlock, x: torch.Tensor) -> torch.Tensor:
    """Window attention written out window by window (zero padding at the bottom/right, padded tokens attend)."""
    h, w = block.resolution
    ws = block.window
    b, _, c = x.shape
    ph, pw = -(-h // ws) * ws, -(-w // ws) * ws
    grid = torch.zeros(b, ph, pw, c)
    grid[:, :h, :w] = x.view(b, h, w, c)
    out = torch.zeros_like(grid)
    attn = block.attn
    bias = attn.attention_biases[:, attn.attention_bias_idxs]
    for r in range(0, ph, ws):
        for s in range(0, pw, ws):
            tokens = attn.norm(grid[:, r:r + ws, s:s + ws].reshape(b, ws * ws, c))
            qkv = attn.qkv(tokens).view(b, ws * ws, attn.num_heads, 3, attn.head_dim)
            q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))
            weights = torch.softmax(q @ k.transpose(-1, -2) * attn.head_dim ** -0.5 + bias, dim=-1)
            y = attn.proj((weights @ v).transpose(1, 2).reshape(b, ws * ws, c))
            out[:, r:r + ws, s:s + ws] = y.view(b, ws, ws, c)
    return out[:, :h, :w].reshape(b, h * w, c)


@pytest.mark.parametrize("resolution,window", [((16, 16), 14), ((16, 16), 7), ((7, 7), 7), ((10, 12), 4)])
def test_window_attention_matches_naive(resolution, window):
    torch.manual_seed(1)
    block = _randomise(TinyViTBlock(20, resolution, num_heads=2, window=window, mlp_ratio=4.0))
    x = torch.randn(2, resolution[0] * resolution[1], 20)
    with torch.no_grad():
        torch.testing.assert_close(block._windowed_attention(x), _naive_block_attention(block, x),
                                   atol=1e-5, rtol=1e-5)
        # the full block: attention residual, depthwise local conv, MLP residual
        y = x + _naive_block_attention(block, x)
        y = block.local_conv(y.transpose(1, 2).reshape(2, 20, *resolution)).flatten(2).transpose(1, 2)
        torch.testing.assert_close(block(x), y + block.mlp(y), atol=1e-5, rtol=1e-5)


def test_histosam_roundtrip(tmp_path, small):
    path = formats.save_histosam(small, tmp_path / "vit_t_small.pt")
    loaded = histosam.load_model(path, device="cpu")
    assert loaded.config.architecture == "vit_t" and loaded.image_size == 256
    ref, got = small.state_dict(), loaded.state_dict()
    assert sorted(ref) == sorted(got)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(small.image_encoder(x), loaded.image_encoder(x))


def test_mobile_sam_flat_file_loads(tmp_path):
    """A flat MobileSAM-style state dict (1024 frame); a copy that also stores the bias index tables loads too."""
    torch.manual_seed(2)
    model = _randomise(build_model("vit_t"), seed=2)
    state = model.state_dict()
    torch.save(state, tmp_path / "mobile_sam.pt")
    loaded = histosam.load_model(tmp_path / "mobile_sam.pt", device="cpu")
    assert loaded.config.architecture == "vit_t" and loaded.image_size == 1024
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())
    with_idx = dict(state)
    for name, buf in model.named_buffers():
        if name.endswith("attention_bias_idxs"):
            with_idx[name] = buf
    assert len(with_idx) == len(state) + 10
    torch.save(with_idx, tmp_path / "with_idx.pt")
    histosam.load_model(tmp_path / "with_idx.pt", device="cpu", architecture="vit_t")
    broken = dict(state)
    broken["image_encoder.layers.2.blocks.0.attn.attention_biases"] = torch.zeros(5, 49)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"attention_biases: checkpoint \(5, 49\) vs model \(5, 196\)"):
        histosam.load_model(tmp_path / "broken.pt", device="cpu")


def test_predictor_runs_with_vit_t(small):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    pred = histosam.Predictor(small, device="cpu", precision="fp32")
    pred.set_image(img)
    assert pred.get_image_embedding().shape == (1, 256, 16, 16)
    out = pred.predict(points=np.array([[50.0, 60.0]]), multimask=True)
    assert out.masks.shape == (1, 3, 120, 200) and out.scores.shape == (1, 3)


def test_encoder_rejects_bad_size():
    with pytest.raises(ValueError, match="multiple of 64"):
        build_model("vit_t", img_size=300)
