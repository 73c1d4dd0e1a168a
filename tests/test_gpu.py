"""Parity and fast-path checks on a CUDA device (skipped where there is none, as in CI).

Same contract as the CPU parity tests, on the GPU: identical random weights saved in the official formats,
the reference modules and histosam's on the same device. fp32 mode must match the reference; the default fast
path (bf16 autocast) must stay within cosine 0.999 of it and give the same masks for the same prompts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_shims import import_torch_em_unetr, install_torchvision_shim

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
install_torchvision_shim()
pytest.importorskip("segment_anything")

import histosam  # noqa: E402
from histosam.inference.maps import predict_instance_maps  # noqa: E402
from histosam.inference.runtime import resolve_precision  # noqa: E402
from reference_models import TINY, VIT_B, reference_sam, reference_unetr, save_micro_sam, save_sam  # noqa: E402

CUDA = torch.device("cuda")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module", params=["tiny", "vit_b"])
def cuda_pair(request, tmp_path_factory):
    torch.manual_seed(0)
    ref = reference_sam(TINY if request.param == "tiny" else VIT_B)
    path = save_sam(ref, tmp_path_factory.mktemp("ckpt") / "sam.pth")
    return ref.to(CUDA).eval(), histosam.load_model(path, device=CUDA)


def test_default_precision_on_cuda_is_bf16():
    assert resolve_precision("auto", CUDA) == "bf16"


def test_embedding_and_mask_parity_fp32_cuda(cuda_pair):
    from segment_anything import SamPredictor

    ref, model = cuda_pair
    img = _image(600, 800)
    rp = SamPredictor(ref)
    rp.set_image(img)
    pred = histosam.Predictor(model, device=CUDA, precision="fp32")
    pred.set_image(img)
    a, b = rp.get_image_embedding().float().cpu(), pred.get_image_embedding().float().cpu()
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos >= 0.9999
    assert (a - b).abs().max() <= 1e-3 * a.abs().max()  # cuDNN may pick other conv algorithms (TF32)
    for kw in (dict(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1])),
               dict(box=np.array([100.0, 120.0, 420.0, 380.0]))):
        m_ref, iou_ref, _ = rp.predict(multimask_output=True, **kw)
        ours = pred.predict(points=kw.get("point_coords"), labels=kw.get("point_labels"), box=kw.get("box"),
                            multimask=True)
        for c in range(3):
            assert _iou(ours.masks[0, c], m_ref[c]) >= 0.99
        np.testing.assert_allclose(ours.scores[0], iou_ref, atol=1e-3)


def test_fast_path_cuda_close_to_reference(cuda_pair):
    from segment_anything import SamPredictor

    ref, model = cuda_pair
    img = _image(512, 512, seed=2)
    rp = SamPredictor(ref)
    rp.set_image(img)
    pred = histosam.Predictor(model, device=CUDA)  # precision="auto" -> bf16 autocast
    pred.set_image(img)
    a, b = rp.get_image_embedding().float().cpu(), pred.get_image_embedding().float().cpu()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) >= 0.999
    m_ref, _, _ = rp.predict(box=np.array([60.0, 80.0, 400.0, 300.0]), multimask_output=False)
    ours = pred.predict(box=np.array([60.0, 80.0, 400.0, 300.0]), multimask=False)
    assert _iou(ours.masks[0, 0], m_ref[0]) >= 0.95


def test_instance_maps_cuda_match_cpu(tmp_path):
    if import_torch_em_unetr() is None:
        pytest.skip("torch-em is not installed")
    torch.manual_seed(0)
    sam = reference_sam(TINY)
    unetr = reference_unetr(sam.image_encoder)
    path = save_micro_sam(sam, unetr, tmp_path / "micro_sam.pt")
    img = _image(200, 300, seed=4)
    cpu = predict_instance_maps(histosam.load_model(path, device="cpu"), img[None], precision="fp32")
    gpu = predict_instance_maps(histosam.load_model(path, device=CUDA), img[None], device=CUDA, precision="fp32")
    assert cpu.shape == gpu.shape == (1, 3, 200, 300)
    assert np.abs(cpu - gpu).max() <= 1e-3
