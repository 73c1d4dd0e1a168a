"""Training the context head (and the no-context baseline) and the prompted-region evaluation, on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from histosam.models.build import build_model
from histosam.registry.formats import save_histosam
from histosam.train.context import ContextTrainConfig, box_noise, gland_sample, sample_points, train_context


def _dataset(folder, n=4, size=96):
    import tifffile
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = np.full((size, size, 3), 230, np.uint8)
        lab = np.zeros((size, size), np.int32)
        for k in range(1, 4):
            cx, cy, r = rng.integers(15, size - 15), rng.integers(15, size - 15), rng.integers(6, 12)
            disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            lab[disk & (lab == 0)] = k
        img[lab > 0] = (150, 60, 140)
        Image.fromarray(img).save(folder / f"im_{i}.png")
        tifffile.imwrite(folder / f"im_{i}_label.tif", lab)
    (folder / "split.json").write_text(json.dumps({"train": ["im_0", "im_1", "im_2"], "val": ["im_3"]}))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctxtrain")
    data = _dataset(d / "data")
    torch.manual_seed(0)
    m = build_model("nano", instance_decoder=None, image_size=64, widths=(8, 16, 32, 48), depths=(1, 1, 1))
    m.config.mpp = 1.0
    init = save_histosam(m, d / "init.pt")
    return d, data, init


def _cfg(d, data, init, **kw):
    base = dict(data_dir=str(data), init=str(init), split=str(data / "split.json"), data_mpp=1.0, batch_size=2,
                iterations=2, val_every=2, jitter=4, min_area=10, threads=1)
    base.update(kw)
    return ContextTrainConfig(**base)


def test_prompts():
    rng = np.random.default_rng(0)
    mask = np.zeros((50, 60), bool)
    mask[10:20, 30:45] = True
    pts = sample_points(mask, 10, rng)
    assert pts.shape == (10, 2) and mask[pts[:, 1].astype(int), pts[:, 0].astype(int)].all()
    box = np.array([30.0, 10.0, 44.0, 19.0])
    for _ in range(50):
        b = box_noise(box, rng, 0.2)
        w, h = 14, 9
        assert abs((b[0] + b[2]) / 2 - 37) <= 0.1 * w + 1e-9 and abs((b[1] + b[3]) / 2 - 14.5) <= 0.1 * h + 1e-9
        assert abs((b[2] - b[0]) - w) <= 0.2 * w + 1e-9
    np.testing.assert_array_equal(box_noise(box, rng, 0.0), box)


def test_sample_targets_match_the_frames():
    from histosam.inference.context import ContextGeometry

    rng = np.random.default_rng(0)
    img = np.zeros((80, 90, 3), np.uint8)
    mask = np.zeros((80, 90), bool)
    mask[30:50, 40:60] = True
    s = gland_sample(img, mask, ContextGeometry(64, 4), 32, ("box", 0), rng, 0.0, 0)
    assert s["hr0"] == (18, 8)  # centred on the box (its continuous centre is (50, 40))
    assert s["hr_target"].shape == (32, 32) and s["lr_target"].shape == (32, 32)
    assert s["hr_target"].sum() * 4 == pytest.approx(mask.sum())  # area preserved on the 2× coarser grid
    assert s["lr_target"].sum() * 64 == pytest.approx(mask.sum())  # LR grid: 8 working px per cell
    assert s["hr_mask"].sum() == mask.sum()


def test_train_resume_and_baseline(setup):
    from histosam.train.checkpoint import load_train_state

    d, data, init = setup
    out = d / "ctx"
    s1 = train_context(_cfg(d, data, init, output_dir=str(out)), log=lambda m: None)
    assert s1["step"] == 2 and (out / "best.pt").is_file() and (out / "context.pt").is_file()
    state = load_train_state(out / "latest.pt")
    assert state["step"] == 2
    s2 = train_context(_cfg(d, data, init, output_dir=str(out), iterations=3, val_every=1), log=lambda m: None)
    assert s2["step"] == 3
    assert "resumed at step 2" in (out / "train.log").read_text()
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and "val_box_dice" in log[-1]
    import histosam

    trained = histosam.load_model(out / "best.pt", device="cpu")
    assert trained.context_decoder is not None
    # frozen mask decoder (WSI-SAM's setting): the decoder is the initial one, the head moved
    first = histosam.load_model(init, device="cpu")
    for k, v in first.mask_decoder.state_dict().items():
        assert torch.equal(v, trained.mask_decoder.state_dict()[k])
    base = d / "base"
    s3 = train_context(_cfg(d, data, init, output_dir=str(base), context=False), log=lambda m: None)
    assert s3["step"] == 2 and (base / "masks.pt").is_file()
    b = histosam.load_model(base / "best.pt", device="cpu")
    assert b.context_decoder is None
    assert any(not torch.equal(v, b.mask_decoder.state_dict()[k]) for k, v in first.mask_decoder.state_dict().items())


def test_region_evaluation(setup, tmp_path):
    import histosam
    from histosam.evaluation.regions_prompted import RegionPromptConfig, Setting, evaluate_regions, write_report
    from histosam.models.context_head import attach_context_head
    from histosam.train.tissue import load_gland_images

    d, data, init = setup
    m = histosam.load_model(init, device="cpu")
    attach_context_head(m)
    other = histosam.load_model(init, device="cpu")
    images = [(im.name, im.rgb, im.labels) for im in load_gland_images(data, 1.0, 1.0)[:2]]
    cfg = RegionPromptConfig(points=(1, 3), max_clicks=3, min_area=10)
    res = evaluate_regions([Setting("context", m, True), Setting("no-context", m, False),
                            Setting("baseline", other, False)], images, cfg, log=lambda s: None)
    summ = res["summary"]
    assert set(summ) == {"context", "no-context", "baseline"}
    for row in summ.values():
        assert {"dice_box", "dice_points1", "dice_points3", "NoC@85", "NoC@90"} <= set(row)
        assert 1 <= row["NoC@85"] <= 3 and 0 <= row["dice_box"] <= 1
    # the same model without context and the plain model it came from agree (identical prompts and frames)
    assert summ["no-context"]["dice_box"] == pytest.approx(summ["baseline"]["dice_box"])
    report = write_report(res, tmp_path / "out")
    assert "| context |" in report.read_text() and (tmp_path / "out" / "regions.json").is_file()


def test_finetuned_decoder_trains_with_its_own_rate(setup):
    import histosam
    from histosam.models.context_head import attach_context_head
    from histosam.train.context import _param_groups

    d, data, init = setup
    m = histosam.load_model(init, device="cpu")
    attach_context_head(m)
    cfg = _cfg(d, data, init, mask_decoder="finetuned", lr=1e-3, decoder_lr=1e-5)
    groups = _param_groups(m, cfg)
    assert [g["base_lr"] for g in groups] == [1e-3, 1e-5]
    trainable = {id(p) for g in groups for p in g["params"]}
    assert all(p.requires_grad == (id(p) in trainable) for p in m.parameters())
    assert not any(p.requires_grad for p in m.image_encoder.parameters())
    assert not any(p.requires_grad for p in m.prompt_encoder.parameters())
    out = d / "tuned"
    train_context(_cfg(d, data, init, output_dir=str(out), mask_decoder="finetuned"), log=lambda m: None)
    tuned = histosam.load_model(out / "best.pt", device="cpu")
    first = histosam.load_model(init, device="cpu")
    after = tuned.mask_decoder.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in first.mask_decoder.state_dict().items())
    from histosam.registry import formats

    part = formats.split_checkpoint(formats.read_checkpoint(out / "context.pt"), "context.pt")
    assert sorted(part.roles) == ["context", "masks"]  # the finetuned decoder ships with the head
