"""Reading images and converting them, explicitly, to the ``H×W×3 uint8`` RGB the models take.

Conversion rules (:func:`to_rgb_uint8`):

- 2-D grayscale or ``H×W×1`` → the channel is repeated three times.
- ``H×W×4`` RGBA → composited over white using the alpha channel (transparent slide background is white).
- ``3×H×W`` / ``4×H×W`` channels-first arrays (when the last axis is not 3/4) → transposed.
- ``uint8`` → unchanged. ``uint16`` → divided by 257 (the full 0–65535 range maps linearly to 0–255).
  Other integer types → clipped to 0–255. ``bool`` → 0/255. Floats → ×255 when the maximum is ≤ 1, else
  clipped to 0–255; NaN or ±inf values are refused (ImageError).
- ``stretch="channel"``: instead, each channel is min-max stretched to 0–255 (micro-sam ≥ 1.7's behaviour);
  ``stretch="global"``: one min-max over all channels (micro-sam ≤ 1.6 for non-uint8 input).
- Empty images (a zero-length axis) and arrays that are not 2-D/3-D raise :class:`~histosam.errors.ImageError`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from histosam.errors import ImageError, ParameterError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def tiff_mpp(path: str | os.PathLike) -> float | None:
    """µm/px from a TIFF's OME-XML ``PhysicalSizeX``, Aperio ``MPP=`` description or resolution tags (inch or cm
    units) of its first page; ``None`` when absent or when the file is not a TIFF."""
    try:
        import tifffile

        with tifffile.TiffFile(Path(path)) as tif:
            page = tif.pages[0]
            if tif.is_ome and tif.ome_metadata:
                m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
                u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
                if m and (u is None or u.group(1) in ("\u00b5m", "\u03bcm", "um", "micron")):  # micro sign, Greek mu
                    return float(m.group(1))
            desc = page.description or ""
            m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", desc)  # Aperio ImageDescription
            if m:
                return float(m.group(1))
            tags = page.tags
            if "XResolution" not in tags or "ResolutionUnit" not in tags:
                return None
            unit = int(tags["ResolutionUnit"].value)
            num, den = tags["XResolution"].value
            ppu = num / den if den else 0.0
            if ppu <= 0 or unit not in (2, 3):
                return None
            return (25400.0 if unit == 2 else 10000.0) / ppu
    except Exception:  # noqa: BLE001 - not a TIFF or unreadable tags: simply no mpp
        return None


#: µm/px a microscope image can plausibly have (a 1× objective is ~10 µm/px); resolution tags outside this
#: range are a screen or print resolution (72-300 dpi: 85-350 µm/px), not a pixel size
PLAUSIBLE_MPP = (0.02, 20.0)


def image_mpp(path: str | os.PathLike) -> float | None:
    """The pixel size an image file states about itself (:func:`tiff_mpp`), when it is a plausible microscope
    pixel size (:data:`PLAUSIBLE_MPP`); ``None`` otherwise (PNG/JPEG, TIFFs without or with print resolutions)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    return plausible_mpp(tiff_mpp(path))


def plausible_mpp(mpp: float | None) -> float | None:
    """``mpp`` when it lies in :data:`PLAUSIBLE_MPP`, else ``None``."""
    return mpp if mpp is not None and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def read_image(path: str | os.PathLike, stretch: str | None = None) -> np.ndarray:
    """Read an image file (PNG/JPEG/BMP via Pillow, TIFF via tifffile) as ``H×W×3 uint8`` RGB."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    from histosam.limits import max_image_pixels

    cap = max_image_pixels()
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tuple(tif.series[0].shape) if tif.series else ()
                _check_pixels(path, shape, cap)
                _check_tiff_complete(path, tif)
                array = tif.asarray()
        else:
            from PIL import Image

            with Image.open(path) as im:
                _check_pixels(path, (im.size[1], im.size[0]), cap)
                if im.format == "JPEG":
                    _check_jpeg_size(path, im.size)
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    array = np.asarray(im).astype(np.uint16 if im.mode.startswith("I;16") else np.int64)
                elif im.mode not in ("RGB", "RGBA", "L", "LA"):
                    array = np.asarray(im.convert("RGBA" if "A" in im.mode else "RGB"))
                else:
                    array = np.asarray(im)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        raise ImageError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 3 and array.shape[-1] == 2:  # LA
        array = array[..., 0]
    try:
        return to_rgb_uint8(array, stretch=stretch)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from exc


def _check_pixels(path: Path, shape: tuple[int, ...], cap: int) -> None:
    """Refuse an image whose header declares more than ``cap`` pixels (checked before any pixel is decoded)."""
    dims = [int(d) for d in shape if int(d) > 4]  # the two spatial axes (channel/sample axes are <= 4)
    n = int(np.prod(dims[-2:], dtype=np.int64)) if len(dims) >= 2 else 0
    if n > cap:
        raise ImageError(f"{path}: declares {n / 1e6:.0f} Mpx ({' x '.join(map(str, shape))}), more than the "
                         f"{cap / 1e6:.0f} Mpx an image read whole may have; use `histosam slide` for whole "
                         "slides (streamed), or raise HISTOSAM_MAX_IMAGE_PIXELS")


def _stretch(a: np.ndarray, per_channel: bool) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float32))
    axes = (0, 1) if per_channel else None
    lo = a.min(axis=axes, keepdims=True)
    hi = a.max(axis=axes, keepdims=True)
    scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1e-12), 0.0)
    return np.clip((a - lo) * scale + 0.5, 0, 255).astype(np.uint8)


def _check_tiff_complete(path: Path, tif) -> None:
    """Refuse a TIFF whose first image's strips or tiles reach past the end of the file (a truncated copy: the
    decoders would fill the missing part instead of failing)."""
    size = path.stat().st_size
    page = tif.pages[0]
    ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts) if n]
    if ends and max(ends) > size:
        raise ImageError(f"{path}: the file is truncated (its image data reach byte {max(ends)}, the file has "
                         f"{size} bytes)")


#: fewer bytes per 8×8 block than any complete baseline JPEG needs (a constant image takes ~0.4 byte a block)
_JPEG_MIN_BYTES_PER_BLOCK = 0.1


def _check_jpeg_size(path: Path, size: tuple[int, int]) -> None:
    """Refuse a JPEG far too small for the pixels its header declares: its scan data end early and libjpeg would
    fill the missing rows with grey instead of failing."""
    blocks = (size[0] / 8.0) * (size[1] / 8.0)
    if path.stat().st_size < blocks * _JPEG_MIN_BYTES_PER_BLOCK:
        raise ImageError(f"{path}: the JPEG is truncated or corrupt ({path.stat().st_size} bytes for the "
                         f"{size[0]}×{size[1]} px its header declares)")


def _check_finite(a: np.ndarray) -> None:
    """A float image with NaN or ±inf values is refused: no scaling rule can tell what they stand for (a band of
    +inf made a whole image black before this check)."""
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise ImageError(f"the float image has {bad} non-finite value(s) (NaN or ±inf); replace them (e.g. with "
                         "numpy.nan_to_num and a value range you choose) and save it again")


def to_rgb_uint8(image: np.ndarray, stretch: str | None = None) -> np.ndarray:
    """Convert an array to ``H×W×3 uint8`` RGB following the rules in the module docstring."""
    a = np.asarray(image)
    if a.size == 0 or 0 in a.shape:
        raise ImageError(f"the image is empty (shape {a.shape})")
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ImageError(f"expected an H×W, H×W×3 or H×W×4 image, got shape {a.shape}")
    alpha = None
    if a.shape[-1] == 4:
        alpha, a = a[..., 3], a[..., :3]
    if stretch in ("channel", "global"):
        if np.issubdtype(a.dtype, np.floating):
            _check_finite(a)
        rgb = _stretch(a, per_channel=stretch == "channel")
    elif stretch is not None:
        raise ParameterError(f"stretch must be None, 'channel' or 'global', not {stretch!r}")
    elif a.dtype == np.uint8:
        rgb = a
    elif a.dtype == np.uint16:
        rgb = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif a.dtype == bool:
        rgb = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.integer):
        rgb = np.clip(a, 0, 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        _check_finite(a)
        f = a.astype(np.float32)
        if f.max(initial=0.0) <= 1.0:
            f = f * 255.0
        rgb = np.clip(f + 0.5, 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image dtype {a.dtype}")
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    if alpha is not None:
        if alpha.dtype == np.uint16:
            alpha_f = alpha.astype(np.float32) / 65535.0
        elif alpha.dtype == np.uint8:
            alpha_f = alpha.astype(np.float32) / 255.0
        else:
            alpha_f = np.clip(alpha.astype(np.float32), 0, 1)
        alpha_f = alpha_f[..., None]
        rgb = np.clip(rgb.astype(np.float32) * alpha_f + 255.0 * (1.0 - alpha_f) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def list_images(inputs: list[str]) -> list[Path]:
    """Expand files, folders (their image files, sorted) and glob patterns into a list of paths."""
    import glob

    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        elif any(ch in item for ch in "*?["):
            out.extend(sorted(Path(q) for q in glob.glob(item)))
        else:
            out.append(p)
    return out
