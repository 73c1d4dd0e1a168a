"""The annotator's state and logic, without napari or Qt (the widget is thin glue around it).

Frames: the controller works on one *region*: an ``H×W`` image (the whole image, or the visible field of a large
image / slide) whose top-left pixel is ``origin`` (row, col) in the image layer's data pixels. Prompts come in as
layer data coordinates (napari's (row, col)) and are turned into region (x, y) pixels for
:meth:`histosam.Predictor.predict`; masks come back as region-sized arrays.

What a Segment does (the same calls a script would make):

- first prediction of an object with a single point and no box: ``predict(points, labels, multimask=True)``, the
  mask with the best predicted IoU is kept (SAM's convention for ambiguous single clicks);
- otherwise ``predict(points, labels, box, multimask=False)``, with ``mask_input`` = the previous prediction's
  low-res logits of this object (iterative correction: the previous mask is fed back) when ``feedback`` is on.

Commit writes the current object into a label image with a new id (the largest id so far + 1); undo restores the
pixels that commit overwrote.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np


@dataclasses.dataclass
class Commit:
    """One committed object: its id, the flat pixel indices it took and what they held before, its class."""

    object_id: int
    index: np.ndarray
    previous: np.ndarray
    class_name: str | None = None


class AnnotatorController:
    """Predictor state for one image region: embedding, prompts → current object, commits and undo.

    Args:
        model: a loaded model, a registry name, a path or ``None`` (the embedded default).
        device, precision: as :class:`histosam.Predictor`.
    """

    def __init__(self, model: Any = None, device: str | None = None, precision: str = "auto") -> None:
        from histosam.inference.predictor import Predictor
        from histosam.napari._models import class_names, get_model

        if model is None or isinstance(model, str | os.PathLike):
            model = get_model(None if model is None else str(model), device)
        self.model = model
        self.predictor = Predictor(model, device=None if device in (None, "", "auto") else device,
                                   precision=precision)
        self.class_names = class_names(model)
        self.feedback = True
        self.image: np.ndarray | None = None
        self.mpp: float | None = None
        self.origin: tuple[int, int] = (0, 0)
        self.embedding_ready = False
        self.current: np.ndarray | None = None  # bool H×W, the current object
        self._prev: tuple[np.ndarray, np.ndarray] | None = None  # (low-res logits 1×h×w, tile origin)
        self.history: list[Commit] = []
        self.next_id = 1
        self.classes: dict[int, str] = {}

    # ------------------------------------------------------------------ image
    @property
    def shape(self) -> tuple[int, int]:
        assert self.image is not None
        return self.image.shape[:2]

    def set_image(self, image: np.ndarray, mpp: float | None = None, origin: tuple[int, int] = (0, 0)) -> None:
        """Take a new region (cheap: hashing and the tile layout; :meth:`embedding_steps` computes)."""
        from histosam.io.images import to_rgb_uint8

        self.image = to_rgb_uint8(np.asarray(image))
        self.mpp = mpp
        self.origin = (int(origin[0]), int(origin[1]))
        self.predictor.set_image(self.image, mpp=mpp)
        self.embedding_ready = False
        self.clear_object()

    def embedding_steps(self, embedding_path: str | os.PathLike | None = None) -> Iterator[tuple[int, int]]:
        """Compute the region's embeddings tile by tile, yielding ``(done, total)`` after each (a worker thread
        runs this; stopping between yields cancels). With ``embedding_path``: load it when it holds this image's
        embeddings for this model, else compute and save them there."""
        p = self.predictor
        if embedding_path is not None and os.path.exists(embedding_path):
            p.set_image(self.image, embedding_path=embedding_path, mpp=self.mpp)  # reused when it matches
            yield 1, 1
            self.embedding_ready = True
            return
        tiles = getattr(p, "_tiles", None)
        if tiles is None:  # pragma: no cover - a Predictor without tiles: compute all at once
            p.get_tile_embeddings()
            yield 1, 1
        else:
            total = len(tiles)
            yield 0, total
            for k, tile in enumerate(tiles):
                p._tile_embedding(tile)
                yield k + 1, total
        if embedding_path is not None:
            p.save_embedding(embedding_path)
        self.embedding_ready = True

    def compute_embedding(self, embedding_path: str | os.PathLike | None = None) -> None:
        """:meth:`embedding_steps` run to the end (scripts, tests)."""
        for _ in self.embedding_steps(embedding_path):
            pass

    # ---------------------------------------------------------------- prompts
    def prompts(self, points_rc: np.ndarray | None = None, positive: np.ndarray | None = None,
                box_rc: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Layer data coordinates → region prompts: points ``(N, 2)`` (x, y), labels ``(N,)`` (1 / 0), box
        ``[x0, y0, x1, y1]``; points outside the region are left out; a box is clipped to it."""
        h, w = self.shape
        pts = lbl = box = None
        if points_rc is not None and len(points_rc):
            rc = np.asarray(points_rc, np.float64)[:, -2:] - np.array(self.origin, np.float64)
            inside = (rc[:, 0] >= 0) & (rc[:, 0] < h) & (rc[:, 1] >= 0) & (rc[:, 1] < w)
            if inside.any():
                pts = rc[inside][:, ::-1].astype(np.float32)
                pos = np.ones(len(rc), bool) if positive is None else np.asarray(positive, bool)
                lbl = pos[inside].astype(np.int64)
        if box_rc is not None and len(box_rc):
            rc = np.asarray(box_rc, np.float64)[:, -2:] - np.array(self.origin, np.float64)
            (r0, c0), (r1, c1) = rc.min(axis=0), rc.max(axis=0)
            r0, r1 = np.clip([r0, r1], 0, h)
            c0, c1 = np.clip([c0, c1], 0, w)
            if r1 > r0 and c1 > c0:
                box = np.array([c0, r0, c1, r1], np.float32)
        return pts, lbl, box

    def segment(self, points_rc: np.ndarray | None = None, positive: np.ndarray | None = None,
                box_rc: np.ndarray | None = None) -> np.ndarray:
        """Predict the current object from the prompts (see the module docstring); returns the bool mask (also
        :attr:`current`). No prompt in the region: an empty mask."""
        if not self.embedding_ready:
            from histosam.errors import HistosamError

            raise HistosamError("compute the embedding first")
        pts, lbl, box = self.prompts(points_rc, positive, box_rc)
        if pts is None and box is None:
            self.clear_object()
            return np.zeros(self.shape, bool)
        first = self._prev is None or not self.feedback
        multimask = first and box is None and pts is not None and len(pts) == 1
        kwargs: dict[str, Any] = {}
        if not first:
            assert self._prev is not None
            kwargs = {"mask_input": self._prev[0], "mask_origin": self._prev[1]}
        pred = self.predictor.predict(points=pts, labels=lbl, box=box, multimask=multimask, **kwargs)
        best = int(np.argmax(pred.scores[0]))
        self._prev = (pred.low_res_logits[0, best][None].copy(), pred.tile_origin[0].copy())
        self.current = pred.masks[0, best].copy()
        return self.current

    def clear_object(self) -> None:
        """Forget the current object (its mask and the logits fed back)."""
        self.current = None
        self._prev = None

    # ---------------------------------------------------------------- commits
    def commit(self, labels: np.ndarray, class_name: str | None = None) -> int | None:
        """Write the current object into ``labels`` (region-sized, in place) with a new id; None when empty."""
        if self.current is None or not self.current.any():
            return None
        object_id = max(self.next_id, int(labels.max(initial=0)) + 1)
        flat = labels.reshape(-1)
        index = np.flatnonzero(self.current.reshape(-1))
        self.history.append(Commit(object_id, index, flat[index].copy(), class_name))
        flat[index] = object_id
        if class_name:
            self.classes[object_id] = class_name
        self.next_id = object_id + 1
        self.clear_object()
        return object_id

    def undo(self, labels: np.ndarray) -> int | None:
        """Undo the last commit in ``labels`` (in place); returns its id, None when there is none."""
        if not self.history:
            return None
        last = self.history.pop()
        labels.reshape(-1)[last.index] = last.previous
        self.classes.pop(last.object_id, None)
        self.next_id = last.object_id
        return last.object_id

    # ---------------------------------------------------------------- classes
    def predict_class(self, mask: np.ndarray, margin: int = 128) -> str | None:
        """The model's class for an object (class head probabilities averaged over the mask, on a crop of the
        region around it with ``margin`` working pixels of context); None without a class head."""
        if not self.class_names or self.image is None or not mask.any():
            return None
        from histosam.inference.maps import make_map_predictor
        from histosam.tasks.nuclei import resample_labels, resample_rgb, rescale_factor

        factor = rescale_factor(self.mpp, self.model)
        pad = int(np.ceil(margin / factor))
        rows, cols = np.nonzero(mask)
        r0, r1 = max(rows.min() - pad, 0), min(rows.max() + 1 + pad, mask.shape[0])
        c0, c1 = max(cols.min() - pad, 0), min(cols.max() + 1 + pad, mask.shape[1])
        crop = self.image[r0:r1, c0:c1]
        work = resample_rgb(crop, factor) if factor != 1.0 else crop
        maps = make_map_predictor(self.model, self.predictor.device, self.predictor.precision,
                                  with_classes=True)(work[None])[0]
        m = mask[r0:r1, c0:c1]
        if factor != 1.0:
            m = resample_labels(m.astype(np.uint8), work.shape[:2]).astype(bool)
        if not m.any():
            return None
        probs = maps[3:, m].mean(axis=1)
        return self.class_names[1 + int(np.argmax(probs[1:]))]
