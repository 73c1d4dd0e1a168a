"""WSI-SAM's context head: token aggregation, fusion shapes, the λ loss, checkpoints by role."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from histosam.models.build import build_model
from histosam.models.context_head import ContextHead, attach_context_head, context_spec
from histosam.train.context import context_loss, dice_bce


def tiny(frame: int = 64, mpp: float = 1.0):
    torch.manual_seed(0)
    m = build_model("nano", instance_decoder=None, image_size=frame, widths=(8, 16, 32, 48), depths=(1, 1, 1))
    m.config.mpp = mpp
    return m.eval()


def _frames(model, b=1):
    x = torch.randn(2 * b, 3, model.image_size, model.image_size)
    with torch.no_grad():
        emb, skips = model.encode(x)
    return emb[:b], [s[:b] for s in skips], emb[b:], [s[b:] for s in skips]


def test_spec_and_zero_init():
    m = tiny()
    assert context_spec(m) == {"early_channels": [8, 16], "scale": 4}
    head = attach_context_head(m)
    assert m.heads["context"] is head and m.config.context["scale"] == 4
    assert m.contracts()["context"].role == "context"
    # tokens and MLP start as SAM's first mask token and its hypernetwork MLP
    torch.testing.assert_close(head.hr_token.weight, m.mask_decoder.mask_tokens.weight[:1])
    torch.testing.assert_close(head.lr_token.weight, m.mask_decoder.mask_tokens.weight[:1])
    hyper = m.mask_decoder.output_hypernetworks_mlps[0]
    torch.testing.assert_close(head.token_mlp.layers[0].weight, hyper.layers[0].weight)
    hr, hs, _, _ = _frames(m)
    feat = head.image_features(hr, hs)
    assert feat.shape == (1, 32, 32, 32)  # C/8 channels on the mask decoder's 4× grid (frame/2)
    assert float(feat.detach().abs().max()) == 0.0  # zero-initialised last layers: the fused features start as SAM's


def test_fusion_shapes_with_trained_like_weights():
    m = tiny()
    head = attach_context_head(m)
    for p in head.parameters():  # non-zero fusion so every branch contributes
        torch.nn.init.normal_(p, std=0.05)
    hr, hs, lr, ls = _frames(m, b=3)
    feat = head.image_features(hr, hs)
    assert feat.shape == (3, 32, 32, 32) and float(feat.detach().abs().max()) > 0
    # early features: both skips (stride 2 and 4) are projected and resized to the output grid
    assert [tuple(e.weight.shape[:2]) for e in head.early] == [(32, 8), (32, 16)]
    pts = torch.tensor([[[10.0, 12.0], [30.0, 40.0]]]).expand(3, -1, -1)
    lbl = torch.ones(3, 2, dtype=torch.int64)
    box = torch.tensor([[5.0, 5.0, 40.0, 50.0]]).expand(3, -1)
    h, lo, iou = m.decode_context(hr, hs, lr, ls, pts, lbl, box, pts / 4 + 24, box / 4 + 24)
    assert h.shape == (3, 1, 32, 32) and lo.shape == (3, 1, 32, 32) and iou.shape == (3, 1)
    # a shared (1×) embedding gives the same as repeating it
    h1, lo1, _ = m.decode_context(hr[:1], [s[:1] for s in hs], lr[:1], [s[:1] for s in ls], pts[:2], lbl[:2],
                                  box[:2], pts[:2] / 4 + 24, box[:2] / 4 + 24)

    def rep(t):
        return t[:1].expand(2, *t.shape[1:])

    h2, lo2, _ = m.decode_context(rep(hr), [rep(s) for s in hs], rep(lr), [rep(s) for s in ls], pts[:2], lbl[:2],
                                  box[:2], pts[:2] / 4 + 24, box[:2] / 4 + 24)
    assert h1.shape == (2, 1, 32, 32)
    torch.testing.assert_close(h1, h2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lo1, lo2, atol=1e-4, rtol=1e-4)


def test_token_aggregation_is_the_mean_of_updated_hr_and_lr_tokens():
    m = tiny()
    head = attach_context_head(m)
    hr, hs, lr, ls = _frames(m, b=2)
    seen = {}
    m.mask_decoder.transformer.register_forward_hook(lambda mod, inp, out: seen.setdefault("hs", []).append(out[0]))
    head.token_mlp.register_forward_hook(lambda mod, inp, out: seen.update(agg=inp[0], w=out))
    pts = torch.tensor([[[20.0, 20.0]], [[40.0, 30.0]]])
    lbl = torch.ones(2, 1, dtype=torch.int64)
    h, lo, _ = m.decode_context(hr, hs, lr, ls, pts, lbl, lr_point_coords=pts / 4 + 24)
    n_out = 1 + m.mask_decoder.num_mask_tokens  # IoU + mask tokens, then the HR/LR token
    hs_hr, hs_lr = seen["hs"]  # the HR frame's pass, then the LR frame's
    torch.testing.assert_close(seen["agg"], 0.5 * (hs_hr[:, n_out] + hs_lr[:, n_out]))
    # HR token and LR token differ in what they see: swapping the LR frame changes the HR mask (context matters)
    h3, _, _ = m.decode_context(hr, hs, torch.flip(lr, [0]), [torch.flip(s, [0]) for s in ls], pts, lbl,
                                lr_point_coords=pts / 4 + 24)
    assert not torch.allclose(h3, h)


def test_hr_and_lr_masks_equal_for_identical_frames_and_tokens():
    m = tiny()
    attach_context_head(m)
    hr, hs, _, _ = _frames(m)
    pts, lbl = torch.tensor([[[20.0, 24.0]]]), torch.ones(1, 1, dtype=torch.int64)
    h, lo, _ = m.decode_context(hr, hs, hr, hs, pts, lbl, lr_point_coords=pts)
    torch.testing.assert_close(h, lo)


def test_lambda_loss_against_hand_values():
    z = torch.zeros(1, 1, 2, 2)
    t_hr = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    t_lr = torch.ones(1, 1, 2, 2)
    ln2 = math.log(2)
    # p = 0.5 everywhere: Dice_hr = 1 - (2*0.5 + 1)/(2 + 1 + 1) = 0.5, Dice_lr = 1 - (2*2 + 1)/(2 + 4 + 1) = 2/7
    assert float(dice_bce(z, t_hr)) == pytest.approx(0.5 + ln2, abs=1e-6)
    assert float(dice_bce(z, t_lr)) == pytest.approx(2 / 7 + ln2, abs=1e-6)
    for lam in (0.0, 0.25, 0.5, 1.0):
        want = lam * (0.5 + ln2) + (1 - lam) * (2 / 7 + ln2)
        assert float(context_loss(z, t_hr, z, t_lr, lam)) == pytest.approx(want, abs=1e-6)
    # confident and right: near zero
    big = torch.full((1, 1, 2, 2), 30.0)
    assert float(dice_bce(big, t_lr)) < 1e-6 + 1 / 5


def test_checkpoint_round_trip_by_role(tmp_path):
    import histosam
    from histosam.registry import formats
    from histosam.registry.loader import apply_role

    m = tiny()
    head = attach_context_head(m)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.02)
    assert "context" in formats.model_roles(m)
    full = formats.save_histosam(m, tmp_path / "full.pt")
    back = histosam.load_model(full, device="cpu")
    assert isinstance(back.context_decoder, ContextHead) and back.config.context == m.config.context
    for (k, v), (k2, v2) in zip(head.state_dict().items(), back.context_decoder.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    # the role alone, attached to a model without a context head
    alone = formats.save_histosam(m, tmp_path / "ctx.pt", roles=("context",))
    part = formats.split_checkpoint(formats.read_checkpoint(alone), str(alone))
    assert sorted(part.roles) == ["context"]
    plain = tiny()
    assert plain.context_decoder is None
    apply_role(plain, "context", part.roles["context"], str(alone))
    for k, v in head.state_dict().items():
        assert torch.equal(plain.context_decoder.state_dict()[k], v)
    # a plain model's file has no context role and loads without one
    nohead = histosam.load_model(formats.save_histosam(tiny(), tmp_path / "plain.pt"), device="cpu")
    assert nohead.context_decoder is None and "context" not in nohead.heads


def test_head_is_small():
    m = tiny(frame=256)
    head = attach_context_head(m, {"early_channels": [24, 48], "scale": 4})
    n = sum(p.numel() for p in head.parameters())
    assert n < 300_000, n  # < 1 MB in fp32 on top of the model
    assert np.isfinite(n)


def test_upscaling_rows_match_the_modules_and_lr_mask_is_optional():
    from histosam.models.context_head import _upscale_rows

    m = tiny()
    head = attach_context_head(m)
    rows = torch.randn(3, 64, 256)
    want = m.mask_decoder.output_upscaling(rows.transpose(1, 2).reshape(3, 256, 8, 8))  # B×32×32×32
    got = _upscale_rows(m.mask_decoder, rows)  # B×(8·8·16)×32 in row order
    img = got.view(3, 8, 8, 2, 2, 2, 2, 32).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(3, 32, 32, 32)
    torch.testing.assert_close(img, want, atol=1e-5, rtol=1e-4)
    # frame features use the same row order
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.05)
    emb, skips, _, _ = _frames(m)
    f_img = head.image_features(emb, skips)
    f_rows = head.frame_features(emb, skips)
    back = f_rows.view(1, 8, 8, 2, 2, 2, 2, 32).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(1, 32, 32, 32)
    torch.testing.assert_close(back, f_img)
    hr, hs, lr, ls = _frames(m)
    pts, lbl = torch.tensor([[[20.0, 24.0]]]), torch.ones(1, 1, dtype=torch.int64)
    h, lo, _ = m.decode_context(hr, hs, lr, ls, pts, lbl, lr_point_coords=pts / 4 + 24)
    h2, lo2, _ = m.decode_context(hr, hs, lr, ls, pts, lbl, lr_point_coords=pts / 4 + 24, lr_mask=False)
    assert lo2 is None and lo is not None
    torch.testing.assert_close(h, h2)


def test_vit_models_get_a_head_without_early_features():
    m = build_model("tiny").eval()  # the ViT family's test model: no encoder skips
    head = attach_context_head(m)
    assert m.config.context["early_channels"] == [] and len(head.early) == 0
    x = torch.randn(2, 3, m.image_size, m.image_size)
    with torch.no_grad():
        emb, skips = m.encode(x)
        hr, lr, iou = m.decode_context(emb[:1], skips, emb[1:], skips, boxes=torch.tensor([[10.0, 10.0, 50.0, 50.0]]),
                                       lr_boxes=torch.tensor([[40.0, 40.0, 50.0, 50.0]]))
    side = 4 * emb.shape[-1]
    assert hr.shape == lr.shape == (1, 1, side, side) and iou.shape == (1, 1)
