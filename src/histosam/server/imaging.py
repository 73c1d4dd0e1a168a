"""Decode the base64 viewport images the client sends, with limits, and key them by content.

The QuPath client sends ``b64img``: a base64 (standard alphabet) PNG of the rendered viewport.
Grayscale, palette, RGBA and 16-bit PNGs are accepted and converted to ``H×W×3 uint8 RGB``
(alpha is dropped; 16-bit is scaled by 1/257). Any format Pillow reads (JPEG, TIFF) works too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np

from histosam.errors import ImageError, ImageTooLargeError


@dataclass(frozen=True)
class DecodedImage:
    """A viewport image: ``pixels`` is ``H×W×3 uint8`` RGB; ``key`` a hex digest of the pixels."""

    pixels: np.ndarray
    key: str

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def content_key(pixels: np.ndarray) -> str:
    """Hash of the decoded pixels (shape, dtype and bytes): equal images share embeddings.

    Two PNG encodings of the same pixels (different compression levels) give the same key,
    which comparing base64 strings (samapi) does not.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((pixels.shape, str(pixels.dtype))).encode())
    h.update(np.ascontiguousarray(pixels).data)
    return h.hexdigest()


def _b64_to_bytes(b64: str) -> bytes:
    s = b64.strip()
    if s.startswith("data:") and "," in s:  # tolerate data URLs
        s = s.split(",", 1)[1]
    if not s:
        raise ImageError("b64img is empty")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"b64img is not valid base64: {exc}") from None


def _to_rgb(img) -> np.ndarray:  # img: PIL.Image.Image
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float gray
        arr = np.asarray(img, dtype=np.float64)
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:  # as the CLI: no scaling rule can tell what NaN/inf stand for
            raise ImageError(f"the float image has {bad} non-finite value(s) (NaN or ±inf)")
        if mode == "F" and arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0  # float in [0, 1]
        elif mode != "F" and (mode.startswith("I;16") or arr.max(initial=0.0) > 255):
            arr = arr / 257.0  # 16-bit range onto 8-bit
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGBA" if mode in ("P", "PA", "LA") else mode).convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def decode_image(b64: str, max_pixels: int) -> DecodedImage:
    """Decode ``b64`` into an RGB uint8 image, refusing images of more than ``max_pixels`` pixels.

    The size is checked from the file header *before* the pixels are decoded, so a small PNG that
    claims to be huge costs nothing. Raises :class:`ImageError` (or :class:`ImageTooLargeError`)
    with a message meant for the user.
    """
    from PIL import Image, UnidentifiedImageError

    data = _b64_to_bytes(b64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageError(f"image has no pixels ({w}×{h})")
            if w * h > max_pixels:
                raise ImageTooLargeError(
                    f"image is {w}×{h} = {w * h} pixels, more than the server's limit of {max_pixels} "
                    "(zoom in, or start the server with a larger --max-pixels)"
                )
            img.load()
            pixels = _to_rgb(img)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"b64img is not a readable image (expected a base64 PNG): {exc}") from None
    pixels = np.array(pixels, dtype=np.uint8, order="C", copy=True)  # writable, owned
    return DecodedImage(pixels=pixels, key=content_key(pixels))


def encode_png_b64(pixels: np.ndarray) -> str:
    """Encode an ``H×W`` or ``H×W×3/4`` uint8 array as base64 PNG (what the client sends; for tests)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
