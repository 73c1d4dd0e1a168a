"""napari sample data: the bundled CC0 H&E example (a 768×768 crop of CMU-1-Small-Region, 0.499 µm/px)."""

from __future__ import annotations


def example_data() -> list[tuple]:
    from histosam.data import EXAMPLE_MPP, example_image

    return [(example_image(), {"name": "cmu1_small_region_crop", "rgb": True, "metadata": {"mpp": EXAMPLE_MPP}},
             "image")]
