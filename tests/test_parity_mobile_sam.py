"""MobileSAM (``vit_t``) parity: histosam on random weights in MobileSAM's layout against reference outputs of
MobileSAM's own stack (TinyViT from ultralytics + segment-anything's predictor), stored by
``make_mobile_sam_reference.py`` in ``data/mobile_sam_reference.npz``. When ultralytics imports, the encoder is
also compared live."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import histosam
from mobile_sam_weights import BOX, POINT, POINTS, digest, random_state_dict, reference_image

REFERENCE = Path(__file__).resolve().parent / "data" / "mobile_sam_reference.npz"


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def weights(reference):
    from histosam.models.build import build_model

    shapes = {k: tuple(v.shape) for k, v in build_model("vit_t").state_dict().items()}
    assert sorted(shapes) == reference["keys"].tolist()  # the checkpoint layout the reference loaded strictly
    state = random_state_dict(shapes)
    assert digest(state) == str(reference["digest"]), "weights differ from those the reference saw"
    return state


@pytest.fixture(scope="module")
def predictor(weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "vit_t_random.pth"
    torch.save(weights, path)
    model = histosam.load_model(path, device="cpu")
    assert model.config.architecture == "vit_t"
    pred = histosam.Predictor(model, precision="fp32")
    pred.set_image(reference_image())
    return pred


def test_embedding_matches_mobile_sam(predictor, reference):
    emb = predictor.get_image_embedding()[0].numpy()
    sub = emb[:, ::8, ::8]
    ref = reference["embedding_sub"]
    cos = float((sub * ref).sum() / np.linalg.norm(sub) / np.linalg.norm(ref))
    assert cos >= 0.9999
    assert np.abs(sub - ref).max() <= 1e-4 * float(reference["embedding_absmax"])
    assert np.linalg.norm(emb) == pytest.approx(float(reference["embedding_norm"]), rel=1e-4)


@pytest.mark.parametrize("name", ["point", "points", "box"])
def test_masks_scores_logits_match_mobile_sam(predictor, reference, name):
    kwargs = {"point": dict(points=POINT[0], labels=POINT[1], multimask=True),
              "points": dict(points=POINTS[0], labels=POINTS[1]),
              "box": dict(box=BOX)}[name]
    result = predictor.predict(**kwargs)  # one prompt set: row 0
    masks, scores, logits = result.masks[0], result.scores[0], result.low_res_logits[0]
    ref_masks = np.unpackbits(reference[f"{name}_masks"], axis=-1, count=masks.shape[-1]).astype(bool)
    assert masks.shape == ref_masks.shape
    for ours, ref in zip(masks, ref_masks):
        union = np.logical_or(ours, ref).sum()
        assert union == 0 or np.logical_and(ours, ref).sum() / union >= 0.99
    np.testing.assert_allclose(scores, reference[f"{name}_scores"], atol=1e-4)
    ref_logits = reference[f"{name}_logits"]
    np.testing.assert_allclose(logits[:, ::4, ::4], ref_logits, atol=1e-3 * np.abs(ref_logits).max())


def test_default_bf16_masks_close_to_mobile_sam(weights, reference, tmp_path):
    path = tmp_path / "vit_t_random.pth"
    torch.save(weights, path)
    pred = histosam.Predictor(histosam.load_model(path, device="cpu"), precision="auto")
    pred.set_image(reference_image())
    masks = pred.predict(box=BOX).masks[0, 0]
    ref = np.unpackbits(reference["box_masks"], axis=-1, count=masks.shape[-1]).astype(bool)[0]
    assert np.logical_and(masks, ref).sum() / np.logical_or(masks, ref).sum() >= 0.95


def test_encoder_matches_ultralytics_tinyvit_live(weights):
    """Runs only where ultralytics (MobileSAM's TinyViT) imports; the stored reference covers CI."""
    pytest.importorskip("ultralytics.models.sam.modules.tiny_encoder")
    from histosam.models.build import build_model
    from make_mobile_sam_reference import reference_model

    sam = reference_model()
    sam.load_state_dict(weights)
    sam.eval()
    ours = build_model("vit_t")
    ours.load_state_dict(weights)
    ours.eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = sam.image_encoder(x), ours.image_encoder(x)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
