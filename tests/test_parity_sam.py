"""Parity with Meta's segment-anything on identical random weights saved in the official format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_shims import install_torchvision_shim

install_torchvision_shim()
pytest.importorskip("segment_anything")

import histosam  # noqa: E402
from reference_models import TINY, VIT_B, reference_sam, save_sam  # noqa: E402


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    ref = reference_sam(TINY)
    path = save_sam(ref, tmp_path_factory.mktemp("ckpt") / "tiny_sam.pth")
    return ref, histosam.load_model(path, device="cpu")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_loads_official_flat_format(tiny_pair):
    ref, model = tiny_pair
    assert model.config.architecture == "tiny"
    ours = model.state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(ours[k], v), k


def test_embedding_parity_fp32(tiny_pair):
    from segment_anything import SamPredictor

    ref, model = tiny_pair
    img = _image(200, 300)
    rp = SamPredictor(ref)
    rp.set_image(img)
    pred = histosam.Predictor(model, precision="fp32")
    pred.set_image(img)
    a, b = rp.get_image_embedding(), pred.get_image_embedding()
    assert a.shape == b.shape == (1, 256, 16, 16)
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos >= 0.9999
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


@pytest.mark.parametrize("fused", [True, False])
def test_attention_paths_agree(tiny_pair, fused):
    _, model = tiny_pair
    for blk in model.image_encoder.blocks:
        blk.attn.fused = fused
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = model.image_encoder(x)
    for blk in model.image_encoder.blocks:
        blk.attn.fused = True
    with torch.no_grad():
        ref = model.image_encoder(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("plan", ["cpu", "gpu"])
@pytest.mark.parametrize("size", [(40, 40), (33, 50)])
def test_blocked_global_attention_equals_one_piece(size, plan, monkeypatch):
    """Grids above the window size take the blocked path (row blocks with a short last one, strided inputs);
    the GPU block plan (all heads at once) is run here on the CPU with a small block budget."""
    from histosam.models import image_encoder
    from histosam.models.image_encoder import attention_with_decomposed_rel_pos

    if plan == "gpu":
        monkeypatch.setattr(image_encoder, "_GPU_BLOCK_ELEMENTS", 3 * 7 * 40 * 40 * 50)  # 7 rows of 40-50 tokens
        monkeypatch.setattr(image_encoder, "attention_block_plan",
                            lambda _, bsz, size, plan=image_encoder.attention_block_plan: plan("cuda", bsz, size))
    torch.manual_seed(0)
    (h, w), heads, d = size, 3, 16
    q, k, v = torch.randn(h * w, 3, heads, d).permute(1, 2, 0, 3).unbind(0)  # (heads, N, d) strided views
    rel_pos_h, rel_pos_w = torch.randn(2 * h - 1, d), torch.randn(2 * w - 1, d)
    expected = attention_with_decomposed_rel_pos(q, k, v, rel_pos_h, rel_pos_w, size, d**-0.5, fused=False)
    out = torch.zeros(h * w, heads, d)
    attention_with_decomposed_rel_pos(q, k, v, rel_pos_h, rel_pos_w, size, d**-0.5, out=out.transpose(0, 1))
    assert torch.allclose(out.transpose(0, 1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sdpa", [False, True])
def test_global_block_fast_paths_equal_plain(sdpa, monkeypatch):
    """A global-attention block on 36×36 tokens (the blocked path, not the window one), two images, as the
    encoder calls it (heads as strided views, output written in place): the fast path (CPU plan, or the CUDA plan
    with SDPA forced onto the CPU) equals the plain path. Weights large enough for peaked attention."""
    from histosam.models import image_encoder

    monkeypatch.setattr(image_encoder, "_sdpa_global_attention", lambda device: sdpa)
    torch.manual_seed(0)
    block = image_encoder.Block(96, 3, window_size=0, input_size=(36, 36)).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.normal_(0, 0.3 if name.startswith("attn.") else 0.05)
        x = torch.randn(2, 36, 36, 96)
        fast = block(x)
        block.attn.fused = False
        plain = block(x)
    assert (fast - x).abs().max() > 1.0  # the attention contributes
    assert torch.allclose(fast, plain, atol=2e-5, rtol=1e-5)


def test_windowed_attention_in_chunks_equals_one_piece(monkeypatch):
    """Window grids (one GEMM with the bias folded in) run at CPU inference in chunks of the batch: chunks of 3
    window-heads with a short last one give the one-piece result."""
    from histosam.models import image_encoder
    from histosam.models.image_encoder import attention_with_decomposed_rel_pos

    monkeypatch.setattr(image_encoder, "_CPU_BLOCK_LOGITS", 3 * 14 * 14 * 14 * 14)
    torch.manual_seed(0)
    size, heads, d = (14, 14), 7, 16
    q, k, v = torch.randn(14 * 14, 3, heads, d).permute(1, 2, 0, 3).unbind(0)
    rel_pos_h, rel_pos_w = torch.randn(27, d), torch.randn(27, d)
    expected = attention_with_decomposed_rel_pos(q, k, v, rel_pos_h, rel_pos_w, size, d**-0.5, fused=False)
    with torch.no_grad():
        out = attention_with_decomposed_rel_pos(q, k, v, rel_pos_h, rel_pos_w, size, d**-0.5)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_as_a_product_is_the_sum_exactly(dtype):
    """The global attention writes each query's bias ``rel_h[kh] + rel_w[kw]`` as a K=2 product: bit-equal to
    the broadcasting add, in fp32 and bf16."""
    from histosam.models.image_encoder import _outer_sum_factors

    torch.manual_seed(0)
    rel_h, rel_w = (torch.randn(2, 5, 7, 9) * 30).to(dtype), (torch.randn(2, 5, 7, 11) * 30).to(dtype)
    rows_h, cols_w = _outer_sum_factors(rel_h, rel_w)
    product = torch.bmm(rows_h.reshape(-1, 9, 2), cols_w.reshape(-1, 2, 11)).view(2, 5, 7, 9, 11)
    assert torch.equal(product, rel_h[..., None] + rel_w[..., None, :])


@pytest.mark.parametrize("size", [(40, 40), (33, 50)])
def test_sdpa_global_attention_equals_one_piece(size, monkeypatch):
    """The CUDA path (one ``scaled_dot_product_attention`` per block of query rows, the bias as its mask), run
    here on the CPU with a small block budget: equal to the one-piece computation, values and gradients."""
    from histosam.models import image_encoder
    from histosam.models.image_encoder import attention_with_decomposed_rel_pos

    monkeypatch.setattr(image_encoder, "_sdpa_global_attention", lambda device: True)
    monkeypatch.setattr(image_encoder, "_GPU_BLOCK_ELEMENTS", 3 * 7 * 40 * 40 * 50)  # 7 rows of 40-50 tokens
    torch.manual_seed(0)
    (h, w), heads, d = size, 3, 16
    qkv = torch.randn(h * w, 3, heads, d, requires_grad=True)
    rel_pos_h = torch.randn(2 * h - 1, d, requires_grad=True)
    rel_pos_w = torch.randn(2 * w - 1, d, requires_grad=True)
    results, grads = [], []
    for fused in (False, True):
        q, k, v = qkv.permute(1, 2, 0, 3).unbind(0)  # (heads, N, d) strided views
        out = attention_with_decomposed_rel_pos(q, k, v, rel_pos_h, rel_pos_w, size, d**-0.5, fused=fused)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results.append(out.detach())
        grads.append([t.grad.clone() for t in (qkv, rel_pos_h, rel_pos_w)])
        for t in (qkv, rel_pos_h, rel_pos_w):
            t.grad = None
    assert torch.allclose(results[1], results[0], atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads[1], grads[0], strict=True):
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_blocked_global_attention_gradients():
    """Finetuning the encoder goes through the blocked path too: its gradients equal the one-piece ones."""
    from histosam.models.image_encoder import attention_with_decomposed_rel_pos

    torch.manual_seed(1)
    size, heads, d = (36, 36), 2, 8
    inputs = [torch.randn(heads, 36 * 36, d, requires_grad=True) for _ in range(3)]
    tables = [torch.randn(2 * 36 - 1, d, requires_grad=True) for _ in range(2)]
    grads = []
    for fused in (True, False):
        out = attention_with_decomposed_rel_pos(*inputs, *tables, size, d**-0.5, fused=fused)
        grads.append(torch.autograd.grad((out * out).sum(), inputs + tables))
    for fast, slow in zip(*grads):
        assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prompt", ["point", "points", "box", "box_points", "mask"])
@pytest.mark.parametrize("multimask", [True, False])
def test_mask_parity(tiny_pair, prompt, multimask):
    from segment_anything import SamPredictor

    ref, model = tiny_pair
    img = _image(200, 300, seed=3)
    rp = SamPredictor(ref)
    rp.set_image(img)
    pred = histosam.Predictor(model, precision="fp32")
    pred.set_image(img)
    kw: dict = {}
    if prompt == "point":
        kw = dict(point_coords=np.array([[120.0, 80.0]]), point_labels=np.array([1]))
    elif prompt == "points":
        kw = dict(point_coords=np.array([[120.0, 80.0], [30.0, 150.0], [250.0, 20.0]]),
                  point_labels=np.array([1, 0, 1]))
    elif prompt in ("box", "box_points"):
        kw = dict(box=np.array([40.0, 30.0, 220.0, 170.0]))
        if prompt == "box_points":
            kw.update(point_coords=np.array([[100.0, 100.0]]), point_labels=np.array([0]))
    else:
        _, _, low = rp.predict(point_coords=np.array([[120.0, 80.0]]), point_labels=np.array([1]),
                               multimask_output=False)
        kw = dict(point_coords=np.array([[120.0, 80.0]]), point_labels=np.array([1]), mask_input=low)
    masks_ref, iou_ref, low_ref = rp.predict(multimask_output=multimask, **kw)
    ours = pred.predict(points=kw.get("point_coords"), labels=kw.get("point_labels"), box=kw.get("box"),
                        mask_input=kw.get("mask_input"), multimask=multimask)
    assert ours.masks.shape == (1, *masks_ref.shape)
    for c in range(masks_ref.shape[0]):
        assert _iou(ours.masks[0, c], masks_ref[c]) >= 0.99
    np.testing.assert_allclose(ours.scores[0], iou_ref, atol=1e-4)
    np.testing.assert_allclose(ours.low_res_logits[0], low_ref, atol=1e-3 * max(1.0, np.abs(low_ref).max()))


def test_batched_prompts_equal_single(tiny_pair):
    _, model = tiny_pair
    img = _image(256, 256, seed=5)
    pred = histosam.Predictor(model, precision="fp32")
    pred.set_image(img)
    pts = np.array([[[50.0, 60.0]], [[200.0, 100.0]], [[120.0, 220.0]]])
    batched = pred.predict(points=pts, labels=np.ones((3, 1)), multimask=True)
    for i in range(3):
        single = pred.predict(points=pts[i], labels=np.ones(1), multimask=True)
        np.testing.assert_allclose(batched.scores[i], single.scores[0], atol=1e-5)
        assert (batched.masks[i] == single.masks[0]).mean() > 0.999


def test_predict_logits_equals_predict(tiny_pair):
    _, model = tiny_pair
    pred = histosam.Predictor(model, precision="fp32")
    pred.set_image(_image(180, 260, seed=2))
    pts = np.array([[[40.0, 50.0]], [[200.0, 120.0]], [[100.0, 30.0]]])
    full = pred.predict(points=pts, labels=np.ones((3, 1)), multimask=True, batch_size=2)
    low = pred.predict_logits(points=pts, labels=np.ones((3, 1)), multimask=True, batch_size=2)
    np.testing.assert_array_equal(low.scores, full.scores)
    np.testing.assert_array_equal(low.low_res_logits, full.low_res_logits)
    np.testing.assert_array_equal(low.tile_origin, full.tile_origin)
    assert full.masks.shape == (3, 3, 180, 260) and full.masks.any()


def test_shared_image_embedding_equals_repeated(tiny_pair):
    """The mask decoder's shared path (one image embedding, B prompt sets: projected once) gives the outputs
    and gradients of the embedding repeated B times (the reference's computation)."""
    _, model = tiny_pair
    torch.manual_seed(3)
    dec, pe = model.mask_decoder, model.prompt_encoder
    emb = torch.randn(1, 256, *pe.image_embedding_size, requires_grad=True)
    sparse, dense = pe(points=(torch.rand(5, 2, 2) * 200, torch.ones(5, 2, dtype=torch.int64)), boxes=None,
                       masks=None)
    assert dense.stride(0) == 0  # no mask prompts: the same dense embedding for every prompt set
    shared = dec.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
    repeated = dec.predict_masks(emb.expand(5, -1, -1, -1), pe.get_dense_pe(), sparse, dense.contiguous())
    for a, b in zip(shared, repeated):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    g_shared = torch.autograd.grad(shared[0].square().mean(), emb)[0]
    g_repeated = torch.autograd.grad(repeated[0].square().mean(), emb)[0]
    torch.testing.assert_close(g_shared, g_repeated, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_vit_b_parity(tmp_path):
    from segment_anything import SamPredictor

    ref = reference_sam(VIT_B)
    model = histosam.load_model(save_sam(ref, tmp_path / "sam_vit_b.pth"), device="cpu")
    assert model.config.architecture == "vit_b"
    img = _image(600, 800)
    rp = SamPredictor(ref)
    rp.set_image(img)
    pred = histosam.Predictor(model, precision="fp32")
    pred.set_image(img)
    a, b = rp.get_image_embedding(), pred.get_image_embedding()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) >= 0.9999
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    m_ref, iou_ref, _ = rp.predict(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1]))
    ours = pred.predict(points=np.array([[300.0, 200.0]]), multimask=True)
    for c in range(3):
        assert _iou(ours.masks[0, c], m_ref[c]) >= 0.99
    np.testing.assert_allclose(ours.scores[0], iou_ref, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 2])
def test_encoder_parity_with_padded_windows(batch):
    """Window 6 on a 16×16 grid pads every row and column of windows; the fast path skips the padded tokens."""
    from histosam.models.image_encoder import ImageEncoderViT

    cfg = dict(TINY, window_size=6, num_heads=4)
    ref = reference_sam(cfg, seed=2).image_encoder
    ours = ImageEncoderViT(img_size=cfg["img_size"], embed_dim=cfg["embed_dim"], depth=cfg["depth"],
                           num_heads=cfg["num_heads"], window_size=cfg["window_size"],
                           global_attn_indexes=cfg["global_attn_indexes"]).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 3, cfg["img_size"], cfg["img_size"])
    with torch.no_grad():
        expected = ref(x)
        fast = ours(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_bf16 = ours(x).float()
    assert (fast - expected).abs().max() <= 1e-5 * expected.abs().max()
    cos = torch.nn.functional.cosine_similarity(fast_bf16.flatten(), expected.flatten(), dim=0)
    assert cos >= 0.999


def test_encoder_gradients_match_reference():
    """Finetuning through the fast path (padded windows, global blocks) gives the reference's gradients."""
    from histosam.models.image_encoder import ImageEncoderViT

    cfg = dict(TINY, window_size=6, img_size=704)  # 44×44 grid: padded windows and a blocked global attention
    ref = reference_sam(cfg, seed=3).image_encoder
    ours = ImageEncoderViT(img_size=cfg["img_size"], embed_dim=cfg["embed_dim"], depth=cfg["depth"],
                           num_heads=cfg["num_heads"], window_size=cfg["window_size"],
                           global_attn_indexes=cfg["global_attn_indexes"])
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, cfg["img_size"], cfg["img_size"])
    for model in (ref, ours):
        model.zero_grad()
        model(x).square().mean().backward()
    expected = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        g = expected[name].grad
        assert torch.allclose(p.grad, g, atol=1e-5 * g.abs().max(), rtol=1e-3), name
