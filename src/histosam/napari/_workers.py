"""Background work for the widgets: generators a napari thread worker runs, so the UI stays responsive.

Each yields ``(message, done, total)`` progress tuples; a generator worker's ``quit()`` stops it at the next yield
(cancel). The UI thread only ever receives results through the worker's signals.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import numpy as np

Progress = tuple[str, int, int]


def embedding_job(controller_factory, read_region, mpp: float | None, origin: tuple[int, int],
                  embedding_path: str | os.PathLike | None = None) -> Generator[Progress, None, Any]:
    """Load the model (``controller_factory()``), read the region (``read_region()``), compute its embedding tile
    by tile; returns the ready :class:`~histosam.napari._annotator.AnnotatorController`."""
    yield "loading the model", 0, 0
    controller = controller_factory()
    yield "reading the image", 0, 0
    image = read_region()
    controller.set_image(image, mpp=mpp, origin=origin)
    for done, total in controller.embedding_steps(embedding_path):
        yield "computing the embedding", done, total
    return controller


def automatic_job(model_factory, read_region, run, origin: tuple[int, int]) -> Generator[Progress, None, Any]:
    """Load the model, read the region, segment it (``run(image, model, origin)``); returns (model, result)."""
    yield "loading the model", 0, 0
    model = model_factory()
    yield "reading the image", 0, 0
    image = np.asarray(read_region())
    yield "segmenting", 0, 0
    return model, run(image, model, origin)
