"""Kim et al.'s refinement mask decoder (histosam.models.refine_decoder): shapes, gradients, initialisation from
SAM's decoder, the histosam checkpoint round trip, and the predictor using it unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histosam.errors import ParameterError
from histosam.models.build import build_from_config, build_model
from histosam.models.mask_decoder import MaskDecoder
from histosam.models.refine_decoder import (
    REFINE_DEFAULTS,
    GlobalAttentionBlock,
    RefineMaskDecoder,
    use_mask_decoder,
)


def _prompts(b=2):
    coords = torch.tensor([[[60.0, 70.0], [120.0, 30.0]]]).repeat(b, 1, 1)
    labels = torch.tensor([[1, 0]]).repeat(b, 1)
    return coords, labels


@pytest.fixture(scope="module")
def tiny_refine():
    torch.manual_seed(0)
    return build_model("tiny", mask_decoder="refine").eval()


def test_shapes_match_sam_decoder(tiny_refine):
    model = tiny_refine
    assert isinstance(model.mask_decoder, RefineMaskDecoder)
    assert model.config.mask_decoder == "refine" and model.config.mask_decoder_options == REFINE_DEFAULTS
    assert model.contracts()["masks"].role == "masks"
    emb = torch.randn(1, 256, 16, 16)
    coords, labels = _prompts(3)
    with torch.no_grad():
        lo, iou = model.decode_masks(emb, coords, labels, multimask=True)
        assert lo.shape == (3, 3, 64, 64) and iou.shape == (3, 3)
        lo1, iou1 = model.decode_masks(emb, coords, labels, multimask=False)
        assert lo1.shape == (3, 1, 64, 64) and iou1.shape == (3, 1)
        # multimask outputs are indices 1..3 of the same four maps, as SAM's
        full, full_iou = model.mask_decoder.predict_masks(
            emb, model.prompt_encoder.get_dense_pe((16, 16)),
            *model.prompt_encoder((coords, labels), None, None, embedding_size=(16, 16)))
        torch.testing.assert_close(full[:, 1:], lo, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(full[:, :1], lo1, atol=1e-5, rtol=1e-5)
        # a box, a mask prompt (the earlier low-res logits) and per-prompt embeddings
        box = torch.tensor([[10.0, 20.0, 120.0, 90.0]])
        lo2, _ = model.decode_masks(emb.expand(1, -1, -1, -1).clone(), boxes=box, mask_input=lo1[:1])
        assert lo2.shape == (1, 1, 64, 64) and torch.isfinite(lo2).all()
        # a shared embedding gives the same result as the embedding repeated per prompt
        lo3, iou3 = model.decode_masks(emb.expand(3, -1, -1, -1).clone(), coords, labels, multimask=True)
        torch.testing.assert_close(lo3, lo, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(iou3, iou, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth", [2, 4])
def test_depth_and_norm_options(depth):
    dec = RefineMaskDecoder(depth=depth, norm="layer", mlp_dim=64)
    assert len(dec.blocks) == depth
    assert dec.output_conv.in_channels == max(256 // 2 ** depth, 16)
    model = build_model("tiny", mask_decoder="refine", mask_decoder_options={"depth": depth, "norm": "layer"})
    lo, iou = model.decode_masks(torch.randn(1, 256, 16, 16), *_prompts(1))
    assert lo.shape == (1, 1, 64, 64) and iou.shape == (1, 1)
    with pytest.raises(ParameterError, match="depth"):
        RefineMaskDecoder(depth=1)
    with pytest.raises(ParameterError, match="unknown refine-decoder option"):
        build_model("tiny", mask_decoder="refine", mask_decoder_options={"width": 3})
    with pytest.raises(ParameterError, match="unknown mask decoder"):
        build_model("tiny", mask_decoder="hq")


def test_gradients_reach_every_part():
    torch.manual_seed(0)
    model = build_model("tiny", mask_decoder="refine")
    dec = model.mask_decoder
    # the attention block starts as the identity (zero output projections); give it weights to see its gradient
    for lin in (dec.global_attention.attn.out_proj, dec.global_attention.mlp.lin2):
        torch.nn.init.normal_(lin.weight, std=0.02)
    emb = torch.randn(2, 256, 16, 16, requires_grad=True)
    lo, iou = model.decode_masks(emb, *_prompts(2), multimask=True)
    (lo.sigmoid().mean() + iou.mean()).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    # the key bias of token→image attention cancels in the softmax (no gradient, in SAM's decoder too)
    missing = [n for n, p in dec.named_parameters() if (p.grad is None or not torch.isfinite(p.grad).all())
               and not n.endswith("token_to_image.k_proj.bias")]
    assert not missing, missing
    for part in ("transformer", "global_attention.attn.q_proj", "global_attention.mlp", "blocks.0", "blocks.2",
                 "output_conv", "iou_prediction_head", "mask_tokens", "iou_token"):
        grads = [p.grad.abs().sum() for n, p in dec.named_parameters() if n.startswith(part) and p.grad is not None]
        assert grads and sum(grads) > 0, part


def test_global_attention_block_starts_as_identity():
    block = GlobalAttentionBlock(32, num_heads=4, mlp_dim=16)
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(block(x, torch.randn(1, 10, 32)), x)


def test_from_sam_decoder_copies_the_shared_parts():
    torch.manual_seed(0)
    sam = build_model("tiny").eval()
    assert isinstance(sam.mask_decoder, MaskDecoder)
    with torch.no_grad():
        for p in sam.mask_decoder.parameters():  # non-default values everywhere
            p.add_(0.01 * torch.randn_like(p))
    refine = RefineMaskDecoder.from_sam_decoder(sam.mask_decoder, depth=3).eval()
    sam_state, new_state = sam.mask_decoder.state_dict(), refine.state_dict()
    for prefix in ("transformer.", "iou_token.", "mask_tokens.", "iou_prediction_head."):
        keys = [k for k in sam_state if k.startswith(prefix)]
        assert keys and all(torch.equal(sam_state[k], new_state[k]) for k in keys), prefix
    assert set(refine.copied_from_sam) == {k for k in sam_state if not k.startswith(
        ("output_upscaling.", "output_hypernetworks_mlps."))}
    assert refine.transformer is not sam.mask_decoder.transformer  # a copy, not shared
    # the IoU head reads the transformer's IoU token only: the same scores as SAM's decoder
    emb = torch.randn(1, 256, 16, 16)
    coords, labels = _prompts(2)
    with torch.no_grad():
        _, iou_sam = sam.decode_masks(emb, coords, labels, multimask=True)
        sam.mask_decoder = refine
        lo, iou_new = sam.decode_masks(emb, coords, labels, multimask=True)
    torch.testing.assert_close(iou_new, iou_sam)
    assert lo.shape == (2, 3, 64, 64)


def test_use_mask_decoder_converts_a_sam_model():
    model = build_model("tiny")
    before = {k: v.clone() for k, v in model.mask_decoder.transformer.state_dict().items()}
    use_mask_decoder(model, "refine", {"depth": 4})
    assert isinstance(model.mask_decoder, RefineMaskDecoder) and model.mask_decoder.options["depth"] == 4
    assert model.config.mask_decoder == "refine" and model.config.mask_decoder_options["depth"] == 4
    assert all(torch.equal(before[k], v) for k, v in model.mask_decoder.transformer.state_dict().items())
    use_mask_decoder(model, "refine")  # already one: kept
    with pytest.raises(ParameterError):
        use_mask_decoder(model, "refine", {"depth": 2})
    with pytest.raises(ParameterError):
        use_mask_decoder(model, "sam")
    assert type(build_from_config(model.config).mask_decoder) is RefineMaskDecoder


@pytest.mark.parametrize("arch,options", [("tiny", {}), ("nano", {"depth": 4, "norm": "layer", "mlp_dim": 128})])
def test_histosam_checkpoint_round_trip(tmp_path, arch, options):
    import histosam
    from histosam.registry.formats import model_roles, save_histosam

    torch.manual_seed(0)
    kw = {"image_size": 128} if arch == "nano" else {}
    model = build_model(arch, mask_decoder="refine", mask_decoder_options=options, **kw).eval()
    roles = model_roles(model)
    assert any(k.startswith("mask_decoder.global_attention.") for k in roles["masks"])
    assert any(k.startswith("mask_decoder.blocks.") for k in roles["masks"])
    path = save_histosam(model, tmp_path / f"{arch}_refine.pt")
    back = histosam.load_model(path, device="cpu")
    assert isinstance(back.mask_decoder, RefineMaskDecoder)
    assert back.config.mask_decoder == "refine" and back.mask_decoder.options == model.mask_decoder.options
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    side = model.prompt_encoder.image_embedding_size[0]
    emb = torch.randn(1, 256, side, side)
    with torch.no_grad():
        a = model.decode_masks(emb, *_prompts(1), multimask=True)
        b = back.decode_masks(emb, *_prompts(1), multimask=True)
    torch.testing.assert_close(a, b)


def test_sam_checkpoint_loads_with_the_sam_decoder(tmp_path):
    """Files written before the field existed (no mask_decoder in the config) keep SAM's decoder."""
    import histosam
    from histosam.registry.formats import save_histosam

    model = build_model("tiny")
    path = save_histosam(model, tmp_path / "sam.pt")
    payload = torch.load(path, weights_only=True)
    for key in ("mask_decoder", "mask_decoder_options"):
        payload["config"].pop(key)
    torch.save(payload, path)
    back = histosam.load_model(path, device="cpu")
    assert type(back.mask_decoder) is MaskDecoder and back.config.mask_decoder == "sam"


def test_predictor_uses_it_unchanged(tiny_refine):
    from histosam.inference.predictor import Predictor

    pred = Predictor(tiny_refine, device="cpu", precision="fp32")
    rng = np.random.default_rng(0)
    pred.set_image(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8))
    out = pred.predict(points=np.array([[30.0, 40.0], [80.0, 60.0]]), labels=np.array([1, 0]), multimask=True)
    assert out.masks.shape == (1, 3, 100, 120) and out.scores.shape == (1, 3)
    best = int(np.argmax(out.scores[0]))
    again = pred.predict(points=np.array([[30.0, 40.0]]), mask_input=out.low_res_logits[0, best][None])
    assert again.masks.shape == (1, 1, 100, 120) and np.isfinite(again.scores).all()
