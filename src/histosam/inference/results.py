"""What :class:`~histosam.inference.predictor.Predictor` returns: masks, scores and low-resolution logits of batched
prompt sets, with the tile and window each was decoded in (frames in the class docstrings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Prediction", "LogitsPrediction", "OUTSIDE_LOGIT", "crop_logits"]

#: logit outside a prompt set's window in the frame-sized ``low_res_logits``, and where a moved ``mask_input``
#: has no values (sigmoid ≈ 2e-9)
OUTSIDE_LOGIT = -20.0


@dataclass
class Prediction:
    """Result of :meth:`Predictor.predict` (always batched: B prompt sets, C = 3 with multimask else 1).

    Unpacks like ``SamPredictor.predict``'s tuple: ``masks, scores, logits = predictor.predict(...)`` (also
    ``prediction[0]``, ``len(prediction) == 3``); ``tile_origin`` and ``window`` only by attribute.

    Attributes:
        masks: bool ``B×C×H×W`` in original image pixels.
        scores: float32 ``B×C`` predicted IoU.
        low_res_logits: float32 ``B×C×4h×4w`` (256×256 for SAM and histosam-nano) in the model frame of each
            row's tile: the frame whose top-left corner is ``tile_origin`` in the (working) image, one value per
            ``frame / 4h`` pixels (resized models: of the resized image). Decoded in a window, the window's
            logits are pasted there and the rest of the frame is :data:`OUTSIDE_LOGIT`. Feed a row back as
            ``mask_input`` (shape ``1×4h×4w``).
        tile_origin: int ``B×2`` (row, col) of the tile each row was predicted in ((0, 0) when untiled).
        window: int ``B×4`` (row, col, height, width) of each row's decoding window in working-image pixels
            (the whole tile frame when not decoded in a window).
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    tile_origin: np.ndarray
    window: np.ndarray | None = None

    def _as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.masks, self.scores, self.low_res_logits

    def __iter__(self):
        return iter(self._as_tuple())

    def __getitem__(self, index):
        return self._as_tuple()[index]

    def __len__(self) -> int:
        return 3


@dataclass
class LogitsPrediction:
    """Result of :meth:`Predictor.predict_logits`: :class:`Prediction` without the full-resolution masks (for
    callers that resize or filter the logits themselves, such as automatic mask generation)."""

    scores: np.ndarray
    low_res_logits: np.ndarray
    tile_origin: np.ndarray
    window: np.ndarray | None = None


def crop_logits(mask: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
    """``mask[..., top:top+h, left:left+w]`` of a ``1×H×W`` array, :data:`OUTSIDE_LOGIT` where that lies outside."""
    out = np.full((*mask.shape[:-2], h, w), OUTSIDE_LOGIT, np.float32)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, mask.shape[-2]), min(left + w, mask.shape[-1])
    if y1 > y0 and x1 > x0:
        out[..., y0 - top: y1 - top, x0 - left: x1 - left] = mask[..., y0:y1, x0:x1]
    return out
