"""Parity of histosam's UNETR instance decoder with torch-em's ``UNETR`` (as micro-sam / PathoSAM use it).

Identical random weights (Meta's SAM + torch-em UNETR, saved as a micro-sam ``{"model_state", "decoder_state"}``
file and loaded with :func:`histosam.load_model`), both BatchNorm behaviours and both upsampler layouts.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch

from reference_shims import import_torch_em_unetr, install_torchvision_shim

install_torchvision_shim()
pytest.importorskip("segment_anything")
if import_torch_em_unetr() is None:
    pytest.skip("torch-em is not installed", allow_module_level=True)

import histosam  # noqa: E402
from histosam.inference.maps import predict_instance_maps  # noqa: E402
from reference_models import TINY, reference_sam, reference_unetr, save_micro_sam  # noqa: E402


@pytest.fixture(scope="module", params=[True, False], ids=["conv_transpose", "interp"])
def pair(request, tmp_path_factory):
    sam = reference_sam(TINY)
    unetr = reference_unetr(sam.image_encoder, conv_transpose=request.param)
    path = save_micro_sam(sam, unetr, tmp_path_factory.mktemp("ckpt") / "micro_sam.pt")
    model = histosam.load_model(path, device="cpu")
    return sam, unetr, model, request.param


@contextlib.contextmanager
def _reference_mode(unetr, train: bool):
    """torch-em module in train mode (BatchNorm on batch statistics, as in micro-sam, which never calls
    ``eval()``) or eval mode; train-mode calls update the running statistics, so restore them afterwards."""
    saved = copy.deepcopy(unetr.state_dict())
    unetr.train(train)
    try:
        yield unetr
    finally:
        unetr.eval()
        unetr.load_state_dict(saved)


def _embedding(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 256, 16, 16, generator=g) * 0.7 + 0.1


def test_loaded_layout(pair):
    _, unetr, model, conv_transpose = pair
    assert model.config.instance_decoder == ("unetr" if conv_transpose else "unetr_interp")
    ours = model.instance_decoder.state_dict()
    ref = {k: v for k, v in unetr.state_dict().items() if not k.startswith("encoder.")}
    assert sorted(ours) == sorted(ref)
    for k, v in ref.items():
        assert torch.equal(ours[k], v), k


@pytest.mark.parametrize("bn_mode", ["batch_stats", "eval"])
def test_decoder_parity(pair, bn_mode):
    _, unetr, model, _ = pair
    z12 = _embedding()
    model.instance_decoder.set_bn_mode(bn_mode)
    try:
        with torch.no_grad(), _reference_mode(unetr, train=bn_mode == "batch_stats"):
            ref = unetr.decode((z12, None, None), (256, 256), (256, 256))
        with torch.no_grad():
            ours = model.instance_decoder(z12)
    finally:
        model.instance_decoder.set_bn_mode("batch_stats")
    assert ours.shape == ref.shape == (1, 3, 256, 256)
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4, diff
    if bn_mode == "eval":  # the two behaviours really differ on these weights (the test can tell them apart)
        with torch.no_grad():
            assert (model.instance_decoder(z12) - ref).abs().max() > 1e-2


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(200, 300), pytest.param((256, 256), marks=pytest.mark.slow),
                                   pytest.param((120, 90), marks=pytest.mark.slow)])
def test_instance_maps_parity(pair, shape):
    """``predict_instance_maps`` == micro-sam: ``SamPredictor.set_image``, UNETR decode on ``predictor.features``,
    then ``postprocess_masks`` (crop to the resized input, resize to the original image)."""
    from segment_anything import SamPredictor

    sam, unetr, model, _ = pair
    img = _image(*shape)
    rp = SamPredictor(sam)
    rp.set_image(img)
    with torch.no_grad(), _reference_mode(unetr, train=True):
        ref = unetr.decode((rp.features, None, None), rp.input_size, rp.original_size)[0].numpy()
    ours = predict_instance_maps(model, img[None], precision="fp32")[0]
    assert ours.shape == ref.shape == (3, *shape)
    assert ours.dtype == np.float32
    diff = float(np.abs(ours - ref).max())
    assert diff <= 1e-3, diff
