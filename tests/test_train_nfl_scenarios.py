"""Kim et al.'s training pieces: the Normalized Focal Loss, the three finetuning scenarios (each freezes what it
says), the refine decoder in training, prompts anywhere in the frame, box shifts, and a short run that learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from histosam.errors import ConfigError
from histosam.models.build import build_model
from histosam.models.refine_decoder import RefineMaskDecoder
from histosam.train.config import TrainConfig, from_dict
from histosam.train.data import PatchDataset
from histosam.train.loop import Trainer, apply_mask_decoder
from histosam.train.losses import dice_loss_per_channel, normalized_focal_loss, sam_loss
from histosam.train.prompts import boxes_from_masks, frame_origin


def synthetic(n=2, size=64, seed=0):
    rng = np.random.default_rng(seed)
    imgs, labs = [], []
    rr, cc = np.ogrid[:size, :size]
    for _ in range(n):
        lab = np.zeros((size, size), np.uint32)
        for i in range(1, 7):
            r, c = rng.integers(7, size - 7, 2)
            lab[(rr - r) ** 2 + (cc - c) ** 2 <= 25] = i
        img = np.full((size, size, 3), 225, np.uint8)
        img[lab > 0] = (90, 40, 140)
        imgs.append(img)
        labs.append(lab)
    return imgs, labs


# ------------------------------------------------------------------------------------------------ the loss
def test_nfl_against_a_hand_computed_value():
    logits = torch.tensor([[0.0, 2.0, -1.0, 3.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    sig = [1 / (1 + math.exp(-x)) for x in (0.0, 2.0, -1.0, 3.0)]
    p_t = [sig[0], 1 - sig[1], 1 - sig[2], sig[3]]  # probability of the true class
    w = [(1 - p) ** 2 for p in p_t]
    expected = -sum(wi * math.log(p) for wi, p in zip(w, p_t)) / sum(w)
    assert abs(expected - 1.6778) < 1e-3  # 0.25·0.693 + 0.776·2.127 + 0.072·0.313 + 0.002·0.049, / 1.100
    got = normalized_focal_loss(logits, target)
    assert got.shape == (1,) and abs(float(got) - expected) < 1e-5
    # gamma 0: every weight 1, so NFL is the mean binary cross-entropy
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert abs(float(normalized_focal_loss(logits, target, gamma=0.0)) - float(bce)) < 1e-6
    # alpha weights positives by alpha, negatives by 1 - alpha inside the sum (RITM's 0.5 halves the loss)
    assert abs(float(normalized_focal_loss(logits, target, alpha=0.5)) - expected / 2) < 1e-5


def test_nfl_per_map_and_normalised():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 1, 8, 8), (torch.rand(3, 1, 8, 8) > 0.5).float()
    per_map = normalized_focal_loss(logits, target)
    assert per_map.shape == (3,)
    for i in range(3):
        assert torch.allclose(normalized_focal_loss(logits[i:i + 1], target[i:i + 1]), per_map[i:i + 1])
    # the weights are normalised: a confident map keeps a loss of the order of its hardest pixels
    easy = normalized_focal_loss(8 * (2 * target - 1), target)
    assert torch.all(easy > 0) and torch.all(easy < 1e-2)
    logits.requires_grad_(True)
    normalized_focal_loss(logits, target).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_sam_loss_mask_loss_options():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3, 16, 16), (torch.rand(4, 1, 16, 16) > 0.6)
    iou = torch.rand(4, 3)
    _, dice, iou_l = sam_loss(logits, iou, target)
    _, nfl, _ = sam_loss(logits, iou, target, mask_loss="nfl")
    both, both_m, _ = sam_loss(logits, iou, target, mask_loss="dice+nfl")
    prob, t = torch.sigmoid(logits), target.float()
    d = torch.stack([dice_loss_per_channel(prob[:, c:c + 1].transpose(0, 1), t.transpose(0, 1)) for c in range(3)])
    n = torch.stack([normalized_focal_loss(logits[:, c:c + 1], t) for c in range(3)])
    assert torch.allclose(dice, d.min(0).values.mean()) and torch.allclose(nfl, n.min(0).values.mean())
    assert torch.allclose(both_m, (d + n).min(0).values.mean()) and torch.allclose(both, both_m + iou_l)
    with pytest.raises(ValueError, match="mask loss"):
        sam_loss(logits, iou, target, mask_loss="bce")


# ------------------------------------------------------------------------------------------------ the config
def test_scenario_config():
    assert from_dict({"model": "tiny", "scenario": "mask_decoder"}).finetune == "mask_decoder"
    assert from_dict({"model": "tiny", "scenario": "encoder_and_mask_decoder"}).finetune == \
        "encoder_and_mask_decoder"
    assert from_dict({"model": "tiny", "scenario": "all", "finetune": "all"}).finetune == "all"
    with pytest.raises(ConfigError, match="contradicts"):
        from_dict({"model": "tiny", "scenario": "mask_decoder", "finetune": "decoders"})
    with pytest.raises(ConfigError, match="scenario"):
        from_dict({"model": "tiny", "scenario": "decoders"})
    for key, bad in (("mask_loss", "bce"), ("mask_decoder", "hq"), ("mask_decoder_depth", 1),
                     ("frame_placement", "centre"), ("box_shift", 0.7)):
        with pytest.raises(ConfigError, match=key):
            from_dict({"model": "tiny", key: bad})
    cfg = from_dict({"model": "tiny", "mask_loss": "dice+nfl", "mask_decoder": "refine", "mask_decoder_depth": 4})
    model = apply_mask_decoder(cfg, build_model("tiny"))
    assert isinstance(model.mask_decoder, RefineMaskDecoder) and model.mask_decoder.options["depth"] == 4


# ------------------------------------------------------------------------------------------------ scenarios
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder", "instance_decoder")
#: what each scenario trains (the rest must stay exactly as it was)
TRAINS = {"mask_decoder": {"mask_decoder"},
          "encoder_and_mask_decoder": {"image_encoder", "mask_decoder"},
          "all": {"image_encoder", "prompt_encoder", "mask_decoder", "instance_decoder"}}


def _trainer(tmp_path, net, **kw):
    opts = dict(model="tiny", patch_size=64, batch_size=2, n_objects=3, n_sub_iterations=2, lr=1e-3,
                output_dir=str(tmp_path), min_instances=2, augment=False, device="cpu", grad_clip=None)
    opts.update(kw)
    cfg = TrainConfig(**opts).validate()
    imgs, labs = synthetic()
    ds = PatchDataset(imgs, labs, 64, 4, 0, min_instances=2, augment=False)
    return Trainer(cfg, net, ds), ds


@pytest.mark.parametrize("arch,scenario", [("tiny", s) for s in TRAINS] + [("nano", "mask_decoder")])
def test_each_scenario_freezes_what_it_says(tmp_path, arch, scenario):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    kw = {"image_size": 128} if arch == "nano" else {"instance_decoder": "unetr"}
    model = build_model(arch, mask_decoder="refine", mask_decoder_options={"mlp_dim": 64}, **kw)
    # mask prompts on every round, so the prompt encoder's mask branch sees gradients as well
    tr, ds = _trainer(tmp_path, model, model=arch, scenario=scenario, mask_prob=1.0)
    assert tr.cfg.finetune == scenario
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    images, inst, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    out = tr.train_step(images, inst, targets, np.random.default_rng(0))
    assert "sam_loss" in out and np.isfinite(out["sam_loss"])
    after = model.state_dict()
    for part in PARTS:
        names = [n for n, _ in getattr(model, part).named_parameters()]
        changed = [n for n in names if not torch.equal(before[f"{part}.{n}"], after[f"{part}.{n}"])]
        if part in TRAINS[scenario]:
            assert changed, f"{scenario}: {part} should have been trained"
        else:
            assert not changed, f"{scenario}: {part} should be frozen, changed {changed[:3]}"
            # buffers too: a frozen nano encoder's BatchNorm running statistics must not drift
            drift = [k for k in after if k.startswith(f"{part}.") and not torch.equal(before[k], after[k])]
            assert not drift, f"{scenario}: {part} buffers changed {drift[:3]}"
        trainable = {p.requires_grad for p in getattr(model, part).parameters()}
        assert trainable == {part in TRAINS[scenario]}, part


# ------------------------------------------------------------------------------------------------ prompts
def test_box_shift_keeps_valid_boxes():
    rng = np.random.default_rng(0)
    masks = np.zeros((20, 40, 50), bool)
    for i in range(20):
        r, c = rng.integers(0, 30), rng.integers(0, 40)
        masks[i, r: r + 10, c: c + 10] = True
    plain = boxes_from_masks(masks, np.random.default_rng(1), 0.0)
    shifted = boxes_from_masks(masks, np.random.default_rng(1), 0.0, shift=0.3)
    assert (shifted[:, 0] < shifted[:, 2]).all() and (shifted[:, 1] < shifted[:, 3]).all()
    assert (shifted[:, :2] >= 0).all() and (shifted[:, 2] <= 50).all() and (shifted[:, 3] <= 40).all()
    assert (shifted != plain).any()
    inside = (shifted[:, 0] > plain[:, 0]) | (shifted[:, 2] < plain[:, 2])  # some boxes cut into their object
    assert inside.any()


def test_frame_origin_covers_the_frame():
    rng = np.random.default_rng(0)
    origins = np.array([frame_origin(64, 128, 8, rng) for _ in range(400)])
    assert (origins % 8 == 0).all() and origins.min() == 0 and origins.max() == 64
    assert len({tuple(o) for o in origins}) > 50


def test_random_frame_placement_moves_patches_and_prompts(tmp_path):
    """A native-resolution model (nano, 128-px frame) trained on 64-px patches placed anywhere in the frame: the
    patch, its targets and its prompts move together."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("nano", image_size=128)
    tr, ds = _trainer(tmp_path, model, model="nano", frame_placement="random", finetune="all")
    images, inst, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(6):
        frame, scale, hw = tr._to_frame(images, rng)
        seen.add(tr.origin)
        r0, c0 = tr.origin
        assert frame.shape[-2:] == (128, 128) and hw == (64, 64) and scale == 1.0
        # the patch sits at the origin, zeros (padding after normalisation) elsewhere
        torch.testing.assert_close(frame[..., r0: r0 + 64, c0: c0 + 64], model.preprocess(images, pad_to=64))
        assert float(frame.abs().sum()) == pytest.approx(float(frame[..., r0: r0 + 64, c0: c0 + 64].abs().sum()))
        # targets in the low-res frame and back to the patch: the same object
        gt = torch.from_numpy(inst[0].numpy() == 1)[None, None]
        low = tr._gt_low_res(gt, 32, hw, 64)
        back = tr._to_patch(low.float() * 2 - 1, hw, 64) > 0
        assert (back == gt).float().mean() > 0.95
    assert len(seen) > 1 and any(o != (0, 0) for o in seen)
    out = tr.train_step(images, inst, targets, np.random.default_rng(0))
    assert np.isfinite(out["sam_loss"]) and np.isfinite(out["decoder_loss"])


# ------------------------------------------------------------------------------------------------ learning
def test_short_run_with_refine_decoder_and_nfl_lowers_the_loss(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("tiny", mask_decoder="refine", mask_decoder_options={"mlp_dim": 64})
    tr, ds = _trainer(tmp_path, model, scenario="mask_decoder", mask_loss="dice+nfl", lr=1e-3, n_objects=4,
                      box_shift=0.1)
    images, inst, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    frame, scale, hw = tr._to_frame(images)

    def loss_now():
        model.eval()
        with torch.no_grad():
            emb, _ = model.encode(frame)
            return float(sum(tr.sam_objective(emb, inst.numpy(), scale, hw, np.random.default_rng(7), it)
                             for it in (0, 1)))

    start = loss_now()
    rng = np.random.default_rng(0)
    for _ in range(12):
        tr.train_step(images, inst, targets, rng)
    end = loss_now()
    assert end < 0.8 * start, (start, end)
