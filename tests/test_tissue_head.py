"""SAM-Path's tissue head: shapes, fusion, contract, checkpoint round trip by role, and the loss by hand."""

import math

import pytest
import torch

from histosam.models.build import build_model
from histosam.models.class_prompts import ClassPromptHead, FeatureFusion
from histosam.models.heads import SECOND_ENCODER_DEFAULT, contract_of
from histosam.train.tissue import gland_targets, tissue_loss

NAMES = ["background", "benign gland", "malignant gland"]


def _spec(second: bool):
    return {"classes": NAMES, "colors": [[0, 0, 0]] * 3, "tokens": 2, "mlp_dim": 64, "depth": 1,
            "second_encoder": dict(SECOND_ENCODER_DEFAULT) if second else None}


@pytest.mark.parametrize("second", [False, True])
def test_head_shapes_and_contract(second):
    torch.manual_seed(0)
    model = build_model("nano", instance_decoder=None, image_size=64, tissue=_spec(second)).eval()
    x = model.preprocess(torch.rand(2, 3, 64, 64) * 255)
    emb, _ = model.encode(x)
    out = model.decode_tissue(emb, x)
    assert emb.shape == (2, 256, 8, 8)
    assert out.shape == (2, 4, 32, 32)  # K + contour at 4x the embedding
    c = contract_of(model.tissue_decoder)
    assert c.role == "tissue" and c.produces == (*NAMES, "interior") and c.consumes == ("embedding", "frame")
    assert "tissue" in model.contracts()
    # every class prompt decodes its own mask: different prompts, different logits
    assert not torch.allclose(out[:, 1], out[:, 2])


def test_fusion_starts_as_identity_and_learns():
    fusion = FeatureFusion(256, 16)
    emb, second = torch.randn(1, 256, 4, 4), torch.randn(1, 16, 8, 8)
    assert torch.equal(fusion(emb, second), emb)
    fusion(emb, second).pow(2).sum().backward()
    assert fusion.out.weight.grad is not None and fusion.out.weight.grad.abs().sum() > 0


def test_second_encoder_gets_gradients():
    model = build_model("nano", instance_decoder=None, image_size=64, tissue=_spec(True))
    with torch.no_grad():
        model.tissue_decoder.fusion.out.weight.normal_(0, 0.01)
    x = model.preprocess(torch.rand(1, 3, 64, 64) * 255)
    emb, _ = model.encode(x)
    model.decode_tissue(emb, x).mean().backward()
    grads = [p.grad for p in model.tissue_decoder.second_encoder.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert model.tissue_decoder.class_prompts.grad is not None


def test_head_needs_two_classes():
    with pytest.raises(ValueError):
        ClassPromptHead(["background"], 64, 8)


def test_checkpoint_round_trip_by_role(tmp_path):
    import histosam
    from histosam.registry.formats import read_checkpoint, save_histosam

    torch.manual_seed(1)
    model = build_model("nano", instance_decoder=None, image_size=64, tissue=_spec(True)).eval()
    model.config.mpp = 1.24
    save_histosam(model, tmp_path / "t.pt")
    assert "tissue" in read_checkpoint(tmp_path / "t.pt")["roles"]
    back = histosam.load_model(str(tmp_path / "t.pt"), device="cpu")
    assert back.config.tissue["classes"] == NAMES and back.config.mpp == 1.24
    x = model.preprocess(torch.rand(1, 3, 64, 64) * 255)
    with torch.no_grad():
        a = model.decode_tissue(model.encode(x)[0], x)
        b = back.decode_tissue(back.encode(x)[0], x)
    assert torch.allclose(a, b, atol=1e-5)


def test_models_without_tissue_head_say_so():
    from histosam.errors import CheckpointError

    model = build_model("nano", image_size=64)
    with pytest.raises(CheckpointError, match="no tissue head"):
        model.decode_tissue(torch.zeros(1, 256, 8, 8))


def test_loss_against_hand_values():
    # one channel, two valid pixels and one padded: logits 0 (p = 0.5) with targets 1 and 0
    logits = torch.tensor([[[[0.0, 0.0, 5.0]]]])
    target = torch.tensor([[[[1.0, 0.0, 1.0]]]])
    valid = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    # Dice: inter = 0.5, Σp = 1, Σt = 1 -> 1 - (2·0.5 + 1) / (2 + 1) = 1/3
    # focal: each valid pixel (1 - 0.5)^2 · log 2 = 0.25 log 2, mean over 2 valid pixels
    alpha = 0.125
    expected = (1 - alpha) * (1 / 3) + alpha * 0.25 * math.log(2)
    assert float(tissue_loss(logits, target, valid, alpha=alpha, gamma=2.0)) == pytest.approx(expected, rel=1e-6)


def test_gland_targets_interior_separates_touching_glands():
    import numpy as np
    from scipy import ndimage as ndi

    lab = np.zeros((10, 12), np.int32)
    lab[2:8, 1:6] = 1
    lab[2:8, 6:11] = 2  # touching gland
    t = gland_targets(lab, 2, 3, border=1)
    assert t.shape == (4, 10, 12)
    assert t[0].sum() == (lab == 0).sum() and t[2].sum() == (lab > 0).sum() and t[1].sum() == 0
    # interior = each gland shrunk by 1 px from background and from the other gland: rows 3..6, cols 2..4 / 7..9
    expected = np.zeros((10, 12), bool)
    expected[3:7, 2:5] = True
    expected[3:7, 7:10] = True
    assert np.array_equal(t[3].astype(bool), expected)
    assert ndi.label(t[3])[1] == 2  # two seeds for two glands


def test_float16_storage_loads_back_as_float32(tmp_path):
    import histosam
    from histosam.registry.formats import read_checkpoint, save_histosam

    model = build_model("nano", instance_decoder=None, image_size=64, tissue=_spec(False))
    save_histosam(model, tmp_path / "h.pt", storage_dtype=torch.float16)
    stored = read_checkpoint(tmp_path / "h.pt")["roles"]["tissue"]
    assert stored["class_prompts"].dtype == torch.float16
    back = histosam.load_model(str(tmp_path / "h.pt"), device="cpu")
    w = back.tissue_decoder.class_prompts
    assert w.dtype == torch.float32
    assert torch.equal(w, model.tissue_decoder.class_prompts.detach().half().float())
