"""HR/LR geometry of WSI-SAM's context: concentric frames, the LR scale, prompt mapping, padding at borders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histosam.errors import HistosamError, ParameterError
from histosam.inference.context import (
    ContextGeometry,
    ContextPredictor,
    ImageSource,
    crop_padded,
    downsample_area,
    frames_tensor,
)
from histosam.models.build import build_model
from histosam.models.context_head import attach_context_head


def tiny(frame: int = 64, mpp: float = 1.0):
    torch.manual_seed(0)
    m = build_model("nano", instance_decoder=None, image_size=frame, widths=(8, 16, 32, 48), depths=(1, 1, 1))
    m.config.mpp = mpp
    attach_context_head(m)
    return m.eval()


def test_frames_are_concentric_and_prompts_map_into_both():
    g = ContextGeometry(64, 4)
    hr0 = g.hr_origin((100.0, 80.0))
    lr0 = g.lr_origin(hr0)
    # centres (continuous coordinates) coincide: HR field 64 px, LR field 256 px
    assert (hr0[0] + 32, hr0[1] + 32) == (lr0[0] + 128, lr0[1] + 128)
    assert abs(hr0[0] + 32 - 100.5) <= 0.5 and abs(hr0[1] + 32 - 80.5) <= 0.5
    centre = np.array([[hr0[0] + 31.5, hr0[1] + 31.5]])  # SAM coordinates of the HR frame's centre
    np.testing.assert_allclose(g.to_hr(centre, hr0), [[31.5, 31.5]])
    np.testing.assert_allclose(g.to_lr(centre, hr0), [[31.5, 31.5]])
    # a working pixel falls into the LR pixel whose 4×4 block holds it
    px = np.array([[hr0[0] - 50.0, hr0[1] + 70.0]])
    lr = g.to_lr(px, hr0)
    np.testing.assert_array_equal(np.floor(lr + 0.5), np.floor((px - np.array(lr0)) / 4))
    # distances shrink by the scale; boxes map corner by corner
    a, b = np.array([[10.0, 10.0]]), np.array([[30.0, 50.0]])
    np.testing.assert_allclose(g.to_lr(b, hr0) - g.to_lr(a, hr0), (b - a) / 4)
    box = np.array([hr0[0] + 10.0, hr0[1] + 12.0, hr0[0] + 40.0, hr0[1] + 44.0])
    np.testing.assert_allclose(g.boxes_to(box, hr0, "hr"), [10, 12, 40, 44])
    np.testing.assert_allclose(g.boxes_to(box, hr0, "lr"), (np.array([10, 12, 40, 44]) + 96 + 0.5) / 4 - 0.5)
    with pytest.raises(ParameterError):
        ContextGeometry(63, 4)


def test_lr_patch_is_the_area_average_of_the_wider_field():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (600, 700, 3)).astype(np.uint8)
    g = ContextGeometry(64, 4)
    hr0 = g.hr_origin((350.0, 300.0))
    src = ImageSource(img)
    hr, hv = src.read(hr0[0], hr0[1], 64, 1)
    np.testing.assert_array_equal(hr, img[hr0[1]:hr0[1] + 64, hr0[0]:hr0[0] + 64])
    assert hv.all()
    lr0 = g.lr_origin(hr0)
    lr, lv = src.read(lr0[0], lr0[1], 64, 4)
    field = img[lr0[1]:lr0[1] + 256, lr0[0]:lr0[0] + 256].astype(np.float64)
    want = field.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    assert lr.shape == (64, 64, 3) and lv.all()
    assert np.abs(lr - want).max() <= 0.5 + 1e-9
    # the HR field is the LR frame's central 16×16 pixels
    np.testing.assert_allclose(lr[24:40, 24:40], hr.astype(np.float64).reshape(16, 4, 16, 4, 3).mean(axis=(1, 3)),
                               atol=0.5 + 1e-9)


def test_padding_at_image_borders():
    img = np.full((100, 120, 3), 90, np.uint8)
    rgb, valid = crop_padded(img, -10, -5, 64, 64)
    assert valid[5:, 10:].all() and not valid[:5].any() and not valid[:, :10].any()
    assert (rgb[~valid] == 255).all() and (rgb[valid] == 90).all()
    g = ContextGeometry(64, 4)
    hr0 = g.hr_origin((5.0, 5.0))  # a prompt in the image's corner
    lr0 = g.lr_origin(hr0)
    lr, lv = ImageSource(img).read(lr0[0], lr0[1], 64, 4)
    # LR pixels whose 4×4 block is at least half inside the image are valid, the rest is padding
    xs = lr0[0] + 4 * np.arange(64)
    ys = lr0[1] + 4 * np.arange(64)
    inside_x = np.clip(xs + 4, 0, 120) - np.clip(xs, 0, 120)  # pixels of each block inside the image
    inside_y = np.clip(ys + 4, 0, 100) - np.clip(ys, 0, 100)
    np.testing.assert_array_equal(lv, inside_y[:, None] * inside_x[None, :] >= 8)
    assert (lr[lv] == 90).all()  # padding never leaks into the average
    m = tiny()
    x = frames_tensor(m, [(lr, lv)])
    assert float(x[0][:, ~torch.from_numpy(lv)].abs().max()) == 0.0  # padding = the model's padding value (0)
    assert float(x[0][:, torch.from_numpy(lv)].abs().min()) > 0.0
    a, v = downsample_area(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), bool), 4)
    assert not v.any() and (a == 255).all()


def test_predictor_places_the_hr_frame_on_the_prompts_and_switches_context():
    m = tiny()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (150, 170, 3)).astype(np.uint8)
    p = ContextPredictor(m)
    p.set_image(img)
    r = p.predict(box=[60, 50, 100, 90])
    assert r.context and r.mask.shape == (150, 170) and r.hr_origin == (49, 39)
    assert r.hr_logits.shape == (32, 32) and r.lr_logits is None  # the LR mask only when asked for
    assert not r.mask[:39].any() and not r.mask[:, :49].any() and not r.mask[103:].any()  # HR frame only
    off = p.predict(box=[60, 50, 100, 90], context=False)
    assert not off.context and off.lr_logits is None and off.hr_origin == r.hr_origin
    # without context the prediction is the model's plain mask decoder on the same HR frame
    x = frames_tensor(m, [ImageSource(img).read(49, 39, 64, 1)])
    with torch.no_grad():
        emb, _ = m.encode(x)
        want, _ = m.decode_masks(emb, boxes=torch.tensor([[11.0, 11.0, 51.0, 51.0]]))
    np.testing.assert_allclose(off.hr_logits, want[0, 0].numpy(), atol=1e-4)
    ext = p.predict(box=[60, 50, 100, 90], extend=True)
    assert ext.lr_logits.shape == (32, 32)
    np.testing.assert_allclose(ext.hr_logits, r.hr_logits, atol=1e-5)
    np.testing.assert_array_equal(ext.mask[39:103, 49:113], r.mask[39:103, 49:113])
    # the caller's resolution: an image at half the working mpp is resampled, masks come back at its size
    p.set_image(np.repeat(np.repeat(img, 2, 0), 2, 1), mpp=0.5)
    r2 = p.predict(box=[120, 100, 200, 180])
    assert r2.mask.shape == (300, 340) and r2.hr_origin == (49, 39)
    with pytest.raises(HistosamError, match="no context head"):
        ContextPredictor(build_model("nano", instance_decoder=None, image_size=64, widths=(8, 16, 32, 48),
                                     depths=(1, 1, 1)))


def test_cli_predict_context_switch(tmp_path):
    from PIL import Image

    from histosam.cli.main import main
    from histosam.registry.formats import save_histosam

    path = save_histosam(tiny(), tmp_path / "ctx.pt")
    img = np.random.default_rng(0).integers(0, 255, (90, 100, 3)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "im.png")
    import json

    for flag, want in (([], True), (["--no-context"], False), (["--context"], True)):
        out = tmp_path / f"m{len(flag)}{want}.png"
        rc = main(["predict", str(tmp_path / "im.png"), "-o", str(out), "--model", str(path), "--box", "20,20,60,50",
                   "--mpp", "1.0", *flag])
        assert rc == 0 and out.is_file()
        assert json.loads(out.with_suffix(".json").read_text()).get("context", False) is want
