"""Context read from a slide: the LR field comes from the pyramid around the HR frame, beyond the region, and it
decides the answer when only the context differs; padding at slide borders."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from histosam.inference.context import ContextPredictor
from histosam.models.build import build_model
from histosam.models.context_head import attach_context_head
from histosam.wsi.reader import open_slide
from histosam.wsi.synthetic import render_region, write_synthetic_slide

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wsi"
CENTRE = (0.5 * 2048, 0.5 * 2048, 60.0, 60.0)  # tissue inside the HR field
EXTRA = (1024 + 200.0, 1024.0, 60.0, 60.0)  # outside the HR field (level-0 960..1088), inside the LR field


def tiny(mpp: float = 1.0):
    torch.manual_seed(0)
    m = build_model("nano", instance_decoder=None, image_size=64, widths=(8, 16, 32, 48), depths=(1, 1, 1))
    m.config.mpp = mpp
    head = attach_context_head(m)
    for p in head.parameters():  # a head that uses its inputs (zero-initialised fusion would too, via the tokens)
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctx")
    a = write_synthetic_slide(d / "a.tif", 2048, 2048, mpp=0.5, levels=4, patches=[CENTRE])
    b = write_synthetic_slide(d / "b.tif", 2048, 2048, mpp=0.5, levels=4, patches=[CENTRE, EXTRA])
    return a, b


def test_lr_context_comes_from_the_slide_and_decides_the_answer(slides):
    m = tiny()
    region = (896, 896, 256, 256)  # level-0 px; at the working 1.0 µm/px: 128 × 128 px
    point = np.array([[64.0, 64.0]])  # the slide's centre, in region pixels at the working mpp
    out = {}
    for name, path in zip("ab", slides):
        with open_slide(path) as s:
            p = ContextPredictor(m)
            p.set_slide_region(s, region)
            on = p.predict(points=point, labels=[1])
            off = p.predict(points=point, labels=[1], context=False)
            hr0 = on.hr_origin
            (hr, hv), (lr, lv) = p.frame_patches(hr0)
            out[name] = (on, off, hr, lr)
            assert hv.all() and lv.all() and on.mask.shape == (128, 128)
            # HR: the working frame at 1.0 µm/px = level-0 pixels 2×2 averaged
            x0, y0 = 2 * (hr0[0] + 448), 2 * (hr0[1] + 448)
            want = render_region(x0, y0, 128, 128, _patches(name)).astype(float).reshape(64, 2, 64, 2, 3).mean((1, 3))
            assert np.abs(hr.astype(float) - want).mean() < 2.0
            # LR: 4× wider field (512 level-0 px) at 4 µm/px, concentric, read from the pyramid
            lx, ly = x0 - 192, y0 - 192  # 96 working px = 192 level-0 px
            want = render_region(lx, ly, 512, 512, _patches(name)).astype(float).reshape(64, 8, 64, 8, 3).mean((1, 3))
            assert np.abs(lr.astype(float) - want).mean() < 2.0
    (on_a, off_a, hr_a, lr_a), (on_b, off_b, hr_b, lr_b) = out["a"], out["b"]
    np.testing.assert_array_equal(hr_a, hr_b)  # the same HR frame ...
    assert np.abs(lr_a.astype(int) - lr_b.astype(int)).max() > 50  # ... different context
    np.testing.assert_allclose(off_a.hr_logits, off_b.hr_logits, atol=1e-5)  # without context: the same answer
    assert np.abs(on_a.hr_logits - on_b.hr_logits).max() > 1e-3  # with context: the slide's context decides


def _patches(name):
    return [CENTRE] if name == "a" else [CENTRE, EXTRA]


def test_padding_at_slide_borders(slides):
    m = tiny()
    with open_slide(slides[0]) as s:
        p = ContextPredictor(m)
        p.set_slide_region(s, (0, 0, 256, 256))
        r = p.predict(points=[[5.0, 5.0]], labels=[1])
        assert r.hr_origin == (-26, -26)
        (hr, hv), (lr, lv) = p.frame_patches(r.hr_origin)
        # HR: working pixels < 0 are outside; LR: 4-px blocks whose centre is outside the slide
        assert not hv[:26].any() and not hv[:, :26].any() and hv[26:, 26:].all()
        lr0 = -26 - 96
        inside = (lr0 + 4 * np.arange(64) + 2) >= 0
        np.testing.assert_array_equal(lv, inside[:, None] & inside[None, :])
        assert (lr[~lv] == 255).all()  # the reader's white, replaced by the model's padding in the frame


def test_region_at_another_mpp(slides):
    m = tiny()
    with open_slide(slides[0]) as s:
        p = ContextPredictor(m)
        p.set_slide_region(s, (896, 896, 256, 256), mpp=0.5)  # prompts and masks at level-0 resolution
        r = p.predict(points=[[128.0, 128.0]], labels=[1])
        assert r.mask.shape == (256, 256) and r.hr_origin == (33, 33)


@pytest.mark.skipif(not (SHARED / "CMU-1-Small-Region.svs").is_file(), reason="needs the shared CMU-1-Small-Region")
def test_cmu_small_region_through_the_python_api():
    m = tiny(mpp=1.0)
    with open_slide(SHARED / "CMU-1-Small-Region.svs") as s:
        w, h = s.dimensions
        p = ContextPredictor(m)
        p.set_slide_region(s, (w // 2 - 128, h // 2 - 128, 256, 256))
        r = p.predict(points=[[40.0, 40.0]], labels=[1])
        (_, hv), (lr, lv) = p.frame_patches(r.hr_origin)
        assert r.mask.shape == (int(round(256 * s.mpp)),) * 2 and hv.all() and lv.all()
        assert lr.std() > 5  # real tissue read from the slide around the region
