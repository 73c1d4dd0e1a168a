"""Helpers shared by test modules (import them with ``from testlib import ...``; ``conftest`` is not a unique module
name once a subfolder has its own conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_nucleus_folder(folder: Path, n_images: int = 3, size: int = 80, seed: int = 0) -> Path:
    """A tiny dataset in the ``<id>.png`` + ``<id>_label.tif`` layout: purple discs (nuclei) on pink."""
    import numpy as np
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n_images):
        lab = np.zeros((size, size), np.uint16)
        rr, cc = np.ogrid[:size, :size]
        for i in range(1, 8):
            r, c = rng.integers(8, size - 8, 2)
            lab[(rr - r) ** 2 + (cc - c) ** 2 <= 25] = i
        img = np.where(lab[..., None] > 0, [90, 40, 140], [225, 220, 230]).astype(np.uint8)
        Image.fromarray(img).save(folder / f"im{k}.png")
        tifffile.imwrite(folder / f"im{k}_label.tif", lab)
    return folder


def typed_nano(names):
    """The shipped histosam-nano with an (untrained) class head of ``names`` attached, trunk from its AIS head."""
    import histosam
    from histosam.models.nano import NanoClassDecoder

    model = histosam.load_model("histosam-nano", device="cpu")
    model.class_decoder = NanoClassDecoder.from_instance_decoder(model.instance_decoder, names,
                                                                 tuple(model.image_encoder.widths[:2])).eval()
    model.config.class_names = list(names)
    return model


def he_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Pink background, purple discs (radius 5-8) on a jittered grid."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (230, 170, 205)
    yy, xx = np.mgrid[0:h, 0:w]
    for cy in range(12, h - 6, 28):
        for cx in range(12, w - 6, 28):
            r = rng.uniform(5, 8)
            img[(yy - cy - rng.uniform(-3, 3)) ** 2 + (xx - cx - rng.uniform(-3, 3)) ** 2 <= r * r] = (90, 40, 140)
    return img
