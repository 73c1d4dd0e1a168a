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
