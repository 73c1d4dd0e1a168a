"""Fixtures of the napari plugin's tests (napari itself is imported only by the test modules that need it, which
skip when it is absent: `pip install -e ".[napari-test]"`, run under `xvfb-run -a`)."""

from __future__ import annotations

import numpy as np
import pytest

#: a crop of the bundled example small enough for one embedding tile of histosam-nano (fast tests)
CROP = (slice(200, 456), slice(300, 556))


@pytest.fixture(scope="session")
def example():
    from histosam.data import example_image

    return example_image()


@pytest.fixture(scope="session")
def crop(example) -> np.ndarray:
    return np.ascontiguousarray(example[CROP])


@pytest.fixture(scope="session")
def mpp() -> float:
    from histosam.data import EXAMPLE_MPP

    return EXAMPLE_MPP


@pytest.fixture(scope="session")
def nano():
    from histosam.napari._models import get_model

    return get_model(None, "cpu")


@pytest.fixture(scope="session")
def tiny_tissue_path(tmp_path_factory):
    """A tiny random region model (tissue head, 64 px frame, 4 µm/px working resolution: a few regions on the
    crop) saved as a histosam checkpoint, so the widgets load it by path like any model."""
    import torch

    from histosam.models.build import build_model
    from histosam.models.heads import SECOND_ENCODER_DEFAULT
    from histosam.registry.formats import save_histosam

    torch.manual_seed(0)
    spec = {"classes": ["background", "gland"], "colors": [[0, 0, 0], [0, 160, 80]], "tokens": 2, "mlp_dim": 64,
            "depth": 1, "second_encoder": dict(SECOND_ENCODER_DEFAULT)}
    model = build_model("nano", instance_decoder=None, image_size=64, tissue=spec).eval()
    model.config.mpp = 4.0
    path = tmp_path_factory.mktemp("tissue") / "tiny_tissue.pt"
    save_histosam(model, path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_tissue(tiny_tissue_path):
    from histosam.napari._models import get_model

    return get_model(tiny_tissue_path, "cpu")
