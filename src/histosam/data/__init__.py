"""Small bundled examples (CC0).

``cmu1_small_region_crop.png``: a 768×768 crop (x 800–1568, y 720–1488, level 0) of OpenSlide's public-domain
test slide ``CMU-1-Small-Region.svs`` (skin, H&E, 20×, 0.499 µm/px; the slide is released under CC0 by
Carnegie Mellon University / the OpenSlide project).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent
EXAMPLE_IMAGE = DATA_DIR / "cmu1_small_region_crop.png"
#: µm/px of the example (the source slide's ``openslide.mpp-x``)
EXAMPLE_MPP = 0.499


def example_image() -> np.ndarray:
    """The bundled H&E example as ``768×768×3 uint8`` RGB (0.499 µm/px)."""
    from histosam.io.images import read_image

    return read_image(EXAMPLE_IMAGE)
