"""Prompt windows (issue 16): native-resolution models decode each prompt set on a window of the image embedding
the size the mask decoder was trained on (histosam-nano: 32×32 cells = 256 px), wherever the prompt lies.

Random-weights models test the geometry exactly (a window's result equals a direct decode on the sliced embedding
with shifted coordinates; windows clamp inside the image at borders and corners; shapes and frames of the
outputs); the shipped weights on real data test the point of it all (the same nucleus gives the same mask
wherever it sits in the frame), skipped without /work/shared/data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from histosam import Predictor
from histosam.inference.predictor import OUTSIDE_LOGIT, Prediction
from histosam.models.build import build_model

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "histosam" / "data" / "cmu1_small_region_crop.png"
DATA = Path("/work/shared/data/monuseg/train")
#: MoNuSeg validation images of configs/histosam-nano.yaml (never trained on)
VAL_IDS = ("TCGA-21-5786-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1", "TCGA-B0-5698-01Z-00-DX1", "TCGA-CH-5767-01Z-00-DX1",
           "TCGA-NH-A8F7-01A-01-TS1")


def _rgb(h: int, w: int) -> np.ndarray:
    from PIL import Image

    with Image.open(BUNDLED) as im:
        rgb = np.asarray(im.convert("RGB"))
    reps = (-(-h // rgb.shape[0]), -(-w // rgb.shape[1]), 1)
    return np.ascontiguousarray(np.tile(rgb, reps)[:h, :w])


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    model = build_model("nano", instance_decoder=None)
    return model.eval()


def _predictor(model, **kw) -> Predictor:
    return Predictor(model, device="cpu", precision="fp32", **kw)


def _direct(model, emb, win_cells, points=None, labels=None, box=None, mask=None, multimask=False, origin=(0, 0)):
    """Decode one prompt set directly on ``emb`` (of the tile at ``origin`` (row, col)) sliced to ``win_cells`` =
    (row, col, side) with shifted coordinates (the reference the predictor must equal)."""
    r, c, s = win_cells
    st = model.embedding_stride
    shift = np.array([c * st + origin[1], r * st + origin[0]], np.float32)
    kw = {}
    if points is not None:
        kw["point_coords"] = torch.from_numpy(np.asarray(points, np.float32)[None] - shift)
        kw["point_labels"] = torch.from_numpy(np.asarray(labels, np.int64)[None])
    if box is not None:
        kw["boxes"] = torch.from_numpy(np.asarray(box, np.float32)[None] - np.tile(shift, 2))
    if mask is not None:
        kw["mask_input"] = torch.from_numpy(mask[None])
    with torch.inference_mode():
        low, iou = model.decode_masks(emb[:, :, r: r + s, c: c + s], multimask=multimask, **kw)
    return low[0].numpy(), iou[0].numpy()


def _window_cells(pred: Prediction, b: int, stride: int = 8) -> tuple[int, int, int]:
    row, col, h, w = (int(v) for v in pred.window[b])
    t_row, t_col = (int(v) for v in pred.tile_origin[b])
    assert h == w
    return (row - t_row) // stride, (col - t_col) // stride, h // stride


def _check_row(model, pred: Prediction, b: int, emb, shape, atol=1e-4, **prompts):
    """Row ``b`` of ``pred`` equals the direct decode on its window: logits inside, OUTSIDE_LOGIT outside, and
    masks = the window's upscaled logits > 0 pasted at the window (False elsewhere)."""
    r, c, s = _window_cells(pred, b)
    low, iou = _direct(model, emb, (r, c, s), origin=tuple(int(v) for v in pred.tile_origin[b]), **prompts)
    frame_low = pred.low_res_logits[b]
    np.testing.assert_allclose(frame_low[:, 4 * r: 4 * (r + s), 4 * c: 4 * (c + s)], low, atol=atol, rtol=1e-4)
    outside = frame_low.copy()
    outside[:, 4 * r: 4 * (r + s), 4 * c: 4 * (c + s)] = OUTSIDE_LOGIT
    assert np.all(outside == OUTSIDE_LOGIT)
    np.testing.assert_allclose(pred.scores[b], iou, atol=atol, rtol=1e-4)
    side = 8 * s
    up = F.interpolate(torch.from_numpy(low)[None], (side, side), mode="bilinear", align_corners=False)[0] > 0
    expected = np.zeros((low.shape[0], *shape), bool)
    y0, x0 = (int(v) for v in pred.window[b][:2])
    y1, x1 = min(y0 + side, shape[0]), min(x0 + side, shape[1])
    expected[:, y0:y1, x0:x1] = up.numpy()[:, : y1 - y0, : x1 - x0]
    # a logit within float noise of 0 may flip; on random weights that is a handful of pixels at most
    assert (pred.masks[b] != expected).sum() <= 2


# ------------------------------------------------------------------------------------------ geometry, one frame
def test_window_is_a_direct_decode_on_the_sliced_embedding(nano):
    pred_ = _predictor(nano)
    assert pred_.window == 256
    image = _rgb(512, 512)
    pred_.set_image(image)
    emb = pred_.get_image_embedding()
    for point in ([300.0, 200.0], [40.0, 470.0], [511.0, 0.0]):
        p = pred_.predict(points=[point], labels=[1], multimask=True)
        r, c, s = _window_cells(p, 0)
        assert s == 32
        x, y = point
        # the point sits inside the window, centred unless the window met the frame border
        assert 8 * c <= x < 8 * (c + s) and 8 * r <= y < 8 * (r + s)
        assert r in (0, 32) or abs((8 * r + 128) - y) <= 8
        assert c in (0, 32) or abs((8 * c + 128) - x) <= 8
        _check_row(nano, p, 0, emb, image.shape[:2], points=[point], labels=[1], multimask=True)
    box = [100.0, 60.0, 160.0, 140.0]
    p = pred_.predict(box=box)
    _check_row(nano, p, 0, emb, image.shape[:2], box=box)
    pts, lbl = [[120.0, 100.0], [150.0, 90.0]], [1, 0]
    p = pred_.predict(points=pts, labels=lbl, box=box)
    _check_row(nano, p, 0, emb, image.shape[:2], points=pts, labels=lbl, box=box)


def test_batched_rows_equal_single_predictions(nano):
    pred_ = _predictor(nano)
    pred_.set_image(_rgb(512, 512))
    pts = np.array([[[30.0, 40.0]], [[256.0, 256.0]], [[500.0, 480.0]], [[200.0, 420.0]]], np.float32)
    batched = pred_.predict(points=pts, labels=np.ones((4, 1)), multimask=True, batch_size=3)
    for b in range(4):
        single = pred_.predict(points=pts[b], labels=np.ones(1), multimask=True)
        np.testing.assert_array_equal(single.window[0], batched.window[b])
        np.testing.assert_allclose(single.low_res_logits[0], batched.low_res_logits[b], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(single.scores[0], batched.scores[b], atol=1e-4, rtol=1e-4)
        assert (single.masks[0] != batched.masks[b]).sum() <= 2


def test_large_prompt_extent_gets_a_larger_window_then_the_whole_frame(nano):
    pred_ = _predictor(nano)
    image = _rgb(512, 512)
    pred_.set_image(image)
    emb = pred_.get_image_embedding()
    box = [50.0, 60.0, 330.0, 300.0]  # 280 px + margins > 256: a window of 40 cells (320 px)
    p = pred_.predict(box=box)
    r, c, s = _window_cells(p, 0)
    assert s == 40 and 8 * c <= 50 and 8 * (c + s) >= 330
    _check_row(nano, p, 0, emb, image.shape[:2], box=box)
    box = [0.0, 0.0, 500.0, 505.0]  # the whole frame: the decode without windows
    p = pred_.predict(box=box)
    assert tuple(p.window[0]) == (0, 0, 512, 512)
    whole = _predictor(nano, prompt_window=0)
    whole.set_image(image)
    q = whole.predict(box=box)
    np.testing.assert_allclose(p.low_res_logits, q.low_res_logits, atol=1e-5)
    np.testing.assert_array_equal(p.masks, q.masks)
    # rows of both window sizes in one call: each as on its own
    both = pred_.predict(box=np.array([[100.0, 100.0, 140.0, 150.0], [50.0, 60.0, 330.0, 300.0]]))
    assert both.window[0][2] == 256 and both.window[1][2] == 320
    _check_row(nano, both, 1, emb, image.shape[:2], box=[50.0, 60.0, 330.0, 300.0])


def test_prompt_window_zero_and_resized_models_decode_the_whole_frame(nano):
    image = _rgb(512, 512)
    whole = _predictor(nano, prompt_window=0)
    assert whole.window is None
    whole.set_image(image)
    p = whole.predict(points=[[300.0, 200.0]], multimask=True)
    low, iou = _direct(nano, whole.get_image_embedding(), (0, 0, 64), points=[[300.0, 200.0]], labels=[1],
                       multimask=True)
    np.testing.assert_allclose(p.low_res_logits[0], low, atol=1e-5)
    assert tuple(p.window[0]) == (0, 0, 512, 512)
    torch.manual_seed(0)
    sam = build_model("tiny")  # resize_longest_side: SAM's behaviour, whatever the config says
    assert sam.config.resize_longest_side
    pred_ = _predictor(sam)
    assert pred_.window is None
    pred_.set_image(image)
    p = pred_.predict(points=[[300.0, 200.0]], multimask=True)
    assert p.low_res_logits.shape == (1, 3, 64, 64)
    with pytest.raises(Exception, match="multiple of the embedding stride"):
        _predictor(nano, prompt_window=100)


# --------------------------------------------------------------------------------- whole images, tiles, borders
def test_prompts_at_every_border_and_corner_of_a_tiled_image(nano):
    pred_ = _predictor(nano)
    image = _rgb(1000, 1000)
    pred_.set_image(image)
    tiles = dict(pred_.get_tile_embeddings())
    assert len(tiles) == 9  # 1000×1000 at a 512 frame: 3×3 tiles, origins 0, 384, 488
    near = [(2.0, 2.0), (997.0, 2.0), (2.0, 997.0), (997.0, 997.0), (500.0, 1.0), (1.0, 500.0), (998.0, 500.0),
            (500.0, 998.0), (450.0, 450.0), (700.0, 300.0)]
    pts = np.array([[p] for p in near], np.float32)
    p = pred_.predict(points=pts, labels=np.ones((len(near), 1)), multimask=True)
    assert p.masks.shape == (len(near), 3, 1000, 1000)
    assert p.low_res_logits.shape == (len(near), 3, 256, 256)
    for b, (x, y) in enumerate(near):
        row, col, h, w = (int(v) for v in p.window[b])
        assert (h, w) == (256, 256)
        assert 0 <= row and row + h <= 1000 and 0 <= col and col + w <= 1000  # clamped inside the image
        assert col <= x < col + w and row <= y < row + h
        t_row, t_col = (int(v) for v in p.tile_origin[b])
        assert t_row <= row and row + h <= t_row + 512 and t_col <= col and col + w <= t_col + 512
        _check_row(nano, p, b, tiles[(t_row, t_col)], image.shape[:2], points=[[x, y]], labels=[1], multimask=True)
        assert not p.masks[b][:, :row].any() and not p.masks[b][:, row + h:].any()
    # a box at the bottom-right corner
    box = [960.0, 950.0, 1000.0, 1000.0]
    q = pred_.predict(box=box)
    assert tuple(q.window[0]) == (744, 744, 256, 256)
    _check_row(nano, q, 0, tiles[tuple(int(v) for v in q.tile_origin[0])], image.shape[:2], box=box)


def test_images_smaller_and_not_a_multiple_of_the_window(nano):
    pred_ = _predictor(nano)
    for h, w in ((200, 150), (300, 437)):
        image = _rgb(h, w)
        pred_.set_image(image)
        emb = pred_.get_image_embedding()
        for x, y in ((1.0, 1.0), (w - 1.0, h - 1.0), (w / 2, h / 2)):
            p = pred_.predict(points=[[x, y]], multimask=False)
            assert p.masks.shape == (1, 1, h, w) and p.low_res_logits.shape == (1, 1, 256, 256)
            r, c, s = _window_cells(p, 0)
            assert s == 32 and (r == 0 or 8 * (r + s) <= -(-h // 8) * 8) and (c == 0 or 8 * (c + s) <= -(-w // 8) * 8)
            _check_row(nano, p, 0, emb, (h, w), points=[[x, y]], labels=[1])


def test_mpp_resampled_images_keep_the_callers_pixels(nano):
    pred_ = _predictor(nano)
    image = _rgb(300, 300)
    pred_.set_image(image, mpp=0.5)  # resampled ×2 to the model's 0.25 µm/px: 600×600, tiled
    p = pred_.predict(points=[[290.0, 10.0]], box=[270.0, 0.0, 300.0, 30.0])
    assert p.masks.shape == (1, 1, 300, 300)
    row, col, h, w = (int(v) for v in p.window[0])  # working-image pixels
    assert col <= 580 < col + w and row <= 20 < row + h


# ------------------------------------------------------------------------------------------------- mask_input
def test_mask_input_is_cropped_to_the_window(nano):
    pred_ = _predictor(nano)
    image = _rgb(512, 512)
    pred_.set_image(image)
    emb = pred_.get_image_embedding()
    first = pred_.predict(points=[[300.0, 200.0]], multimask=True)
    mask = first.low_res_logits[0, int(first.scores[0].argmax())][None]
    pts, lbl = [[300.0, 200.0], [320.0, 230.0]], [1, 0]
    p = pred_.predict(points=pts, labels=lbl, mask_input=mask)
    r, c, s = _window_cells(p, 0)
    _check_row(nano, p, 0, emb, image.shape[:2], points=pts, labels=lbl,
               mask=mask[:, 4 * r: 4 * (r + s), 4 * c: 4 * (c + s)])


def test_mask_input_keeps_or_follows_its_frame_on_tiled_images(nano):
    pred_ = _predictor(nano)
    image = _rgb(1000, 1000)
    pred_.set_image(image)
    first = pred_.predict(points=[[440.0, 300.0]])  # tile (0, 0): margin 72 vs 56 in tile (0, 384)
    assert tuple(first.tile_origin[0]) == (0, 0)
    mask = first.low_res_logits[0]
    # a correction at x = 470 alone would go to tile (0, 384); with the mask it stays in the mask's tile
    pts = [[440.0, 300.0], [470.0, 300.0]]
    alone = pred_.predict(points=pts, labels=[1, 1])
    assert tuple(alone.tile_origin[0]) == (0, 384)
    kept = pred_.predict(points=pts, labels=[1, 1], mask_input=mask)
    assert tuple(kept.tile_origin[0]) == (0, 0)
    tiles = dict(pred_.get_tile_embeddings())
    r, c, s = _window_cells(kept, 0)
    _check_row(nano, kept, 0, tiles[(0, 0)], image.shape[:2], points=pts, labels=[1, 1],
               mask=mask[:, 4 * r: 4 * (r + s), 4 * c: 4 * (c + s)])
    # an explicit origin of another tile: the mask is moved into the chosen tile's frame
    far = pred_.predict(points=[[900.0, 900.0]], labels=[1], mask_input=mask, mask_origin=(0, 0))
    t_row, t_col = (int(v) for v in far.tile_origin[0])
    assert (t_row, t_col) == (488, 488)
    r, c, s = _window_cells(far, 0)
    moved = np.full((1, 256, 256), OUTSIDE_LOGIT, np.float32)
    moved[:, : 256 - t_row // 2, : 256 - t_col // 2] = mask[:, t_row // 2:, t_col // 2:]
    _check_row(nano, far, 0, tiles[(t_row, t_col)], image.shape[:2], points=[[900.0, 900.0]], labels=[1],
               mask=moved[:, 4 * r: 4 * (r + s), 4 * c: 4 * (c + s)])
    with pytest.raises(Exception, match="mask_input must be 256×256"):
        pred_.predict(points=[[10.0, 10.0]], mask_input=np.zeros((1, 128, 128), np.float32))


# -------------------------------------------------------------------------------------------- outputs, shapes
def test_prediction_unpacks_like_sams_tuple(nano):
    pred_ = _predictor(nano)
    pred_.set_image(_rgb(512, 512))
    out = pred_.predict(points=[[100.0, 100.0]], multimask=True)
    masks, scores, logits = out
    assert masks is out.masks and scores is out.scores and logits is out.low_res_logits
    assert out[0] is out.masks and out[-1] is out.low_res_logits and len(out) == 3
    assert masks.shape == (1, 3, 512, 512) and masks.dtype == bool
    assert scores.shape == (1, 3) and scores.dtype == np.float32
    assert logits.shape == (1, 3, 256, 256) and logits.dtype == np.float32
    assert out.tile_origin.shape == (1, 2) and out.window.shape == (1, 4)
    single = pred_.predict(points=[[100.0, 100.0]], box=[80.0, 80.0, 130.0, 120.0])
    assert single.masks.shape == (1, 1, 512, 512) and single.low_res_logits.shape == (1, 1, 256, 256)
    low = pred_.predict_logits(points=[[100.0, 100.0]], multimask=True)
    np.testing.assert_array_equal(low.low_res_logits, out.low_res_logits)
    np.testing.assert_array_equal(low.window, out.window)


# ------------------------------------------------------------------------------------ real data, shipped weights
def _central_nucleus(crop: int = 64, frame: int = 512, step: int = 64):
    """A medium nucleus of a validation image (configs/histosam-nano.yaml, never trained on) whose 64-px crop can
    sit at every position of a 512 frame cut from the same image: (image, crop origin (y, x), its mask in the
    crop, its centre in the crop)."""
    import tifffile
    from PIL import Image

    from histosam.evaluation.protocols import object_centers

    last = (frame - crop) // step * step
    for sid in VAL_IDS:
        with Image.open(DATA / f"{sid}.png") as im:
            image = np.asarray(im.convert("RGB"))
        gt = np.asarray(tifffile.imread(DATA / f"{sid}_label.tif"))
        areas = np.bincount(gt.ravel())
        h, w = gt.shape
        centres = object_centers(gt)
        ids = [i for i, (x, y) in sorted(centres.items()) if 200 <= areas[i] <= 600
               and last <= y - crop // 2 <= h - frame and last <= x - crop // 2 <= w - frame]
        if ids:
            break
    assert ids, "no nucleus near the centre of a validation image"
    i = ids[0]
    x, y = centres[i]
    y0, x0 = y - crop // 2, x - crop // 2
    return image, (y0, x0), gt[y0: y0 + crop, x0: x0 + crop] == i, (x - x0, y - y0)


@pytest.fixture(scope="module")
def slid_nucleus():
    """The same nucleus at every position of the 512 frame, 64 px apart (the frame cut from its own image so that
    its 64-px crop lands there: real tissue all around, as when the field of view moves), with the shipped
    weights: per prompt kind ``{(y, x): (IoU with the mask at the frame's centre, IoU with the nucleus' GT)}``."""
    if not DATA.is_dir():
        pytest.skip("real data (/work/shared/data) not available")
    import histosam

    image, (y0, x0), gm, (px, py) = _central_nucleus()
    crop, margin, step = gm.shape[0], 32, 64
    rows, cols = np.nonzero(gm)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    pred_ = Predictor(histosam.load_model("histosam-nano"), device="cpu", precision="fp32")
    masks = {"point": {}, "box": {}}
    for y in range(0, 512 - crop + 1, step):
        for x in range(0, 512 - crop + 1, step):
            pred_.set_image(image[y0 - y: y0 - y + 512, x0 - x: x0 - x + 512])
            p = pred_.predict(points=[[px + x, py + y]], multimask=True)
            b = pred_.predict(box=box + np.array([x, y, x, y], np.float32))
            for kind, out in (("point", p), ("box", b)):
                m = np.pad(out.masks[0, int(out.scores[0].argmax())], margin)
                near = m[y: y + crop + 2 * margin, x: x + crop + 2 * margin]  # crop coordinates ± margin
                assert near.sum() == m.sum(), f"{kind} mask at {(y, x)} leaks beyond the nucleus' neighbourhood"
                masks[kind][(y, x)] = near
    g = np.pad(gm, margin)
    out = {}
    for kind in ("point", "box"):
        ref = masks[kind][(192, 192)]
        out[kind] = {pos: ((m & ref).sum() / max((m | ref).sum(), 1), (m & g).sum() / max((m | g).sum(), 1))
                     for pos, m in masks[kind].items()}
    return out


def test_real_nucleus_gives_the_same_mask_wherever_its_window_fits(slid_nucleus):
    """Where the prompt's window lies inside the frame (the nucleus ≥ 128 px from every frame border) the masks
    are the same (the encoder is equivariant to shifts by multiples of 16 px away from borders; the window moves
    with the prompt); everywhere the masks overlap the nucleus (before prompt windows: IoU 0 outside the
    top-left quarter)."""
    for kind, res in slid_nucleus.items():
        inner = {pos: v for pos, v in res.items() if all(128 <= c <= 320 for c in pos)}
        assert len(inner) == 16
        assert min(v[0] for v in inner.values()) >= 0.95, (kind, inner)
        assert min(v[1] for v in res.values()) >= 0.3, (kind, res)
        assert np.median([v[1] for v in res.values()]) >= 0.5, (kind, res)


@pytest.mark.xfail(strict=True, reason="issue 16's target (IoU >= 0.9 at every position) is not reached at the frame "
                   "borders: there the window is clamped into the frame (the prompt off its centre) and the "
                   "embedding sees the border (box: IoU 0.39-0.86 with the centre mask on the outer ring)")
def test_real_nucleus_gives_the_same_mask_at_every_position(slid_nucleus):
    for kind, res in slid_nucleus.items():
        assert min(v[0] for v in res.values()) >= 0.9, (kind, res)
