r"""Whole-slide reading: pyramid levels, microns per pixel, regions at a target resolution.

Frames: *level-0 pixels* ``(x, y)`` are the slide's full-resolution frame (OpenSlide convention);
a *level* ``k`` pixel covers ``downsample[k]`` level-0 pixels. Arrays returned are
``H x W x 3 uint8 RGB`` (row, col); transparent pixels are composited on white.

Backends, tried in order: OpenSlide (openslide-python + openslide-bin wheel), tiffslide (SVS, OME-TIFF
pyramids, generic tiled TIFF), tifffile (any TIFF tifffile can read, levels = pages/series levels).
OME-TIFF goes to tiffslide first, because OpenSlide shows only its first level. A backend must also decode one
pixel (OpenSlide opens 32-bit float TIFFs it cannot read). Pixels a backend cannot decode (truncated files, damaged
tiles) raise a one-line :class:`~histosam.errors.SlideError`. Thumbnails are bounded work whatever the header
declares (:meth:`SlideReader.thumbnail`: a pyramid level, else a strided sample of tiles, else a refusal).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from histosam.errors import MissingMppWarning, SampledThumbnailWarning, SlideError
from histosam.io.images import plausible_mpp, tiff_mpp

#: assumed level-0 resolution when the slide stores none and the user passes no ``mpp`` (40x scan)
DEFAULT_MPP = 0.25


#: level pixels a thumbnail may decode (33.5 Mpx, ~100 MB of RGB): beyond it, and without a pyramid level close to
#: the thumbnail's resolution, the thumbnail is sampled (:meth:`SlideReader.thumbnail`)
THUMB_READ_BUDGET = 2**25
#: level pixels a sampled thumbnail decodes at most (16.8 Mpx: 256 tiles of 256 x 256, a few seconds)
THUMB_SAMPLE_BUDGET = 2**24
#: thumbnail pixels at most (67 Mpx: a 65 x 65 mm slide at 8 µm/px); more is a hostile or wrong header
MAX_THUMB_PIXELS = 2**26
#: side (level pixels) of one sample of a sampled thumbnail, rounded up to whole storage segments
THUMB_PATCH = 256
#: fewest cells a sampled thumbnail may have (else the slide's storage layout is refused)
MIN_THUMB_CELLS = 16


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    """RGB(A)/gray array -> ``H x W x 3 uint8``, alpha composited on white."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        if arr[..., 3].min(initial=255) == 255:  # opaque (the common case): no compositing
            return np.ascontiguousarray(arr[..., :3])
        a = arr[..., 3:4].astype(np.uint16)
        rgb = (arr[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
        return rgb.astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


class SlideReader:
    """A whole-slide image opened read-only.

    Attributes:
        path: the slide file.
        backend: ``"openslide"``, ``"tiffslide"`` or ``"tifffile"``.
        level_dimensions: ``[(width, height), ...]`` per level, level 0 first.
        level_downsamples: level-0 pixels per level pixel, per level.
        mpp: level-0 microns per pixel (user override, metadata, or :data:`DEFAULT_MPP`).
        mpp_source: ``"user"``, ``"metadata"`` or ``"default"``.
    """

    def __init__(self, path: str | os.PathLike, mpp: float | None = None, backend: str = "auto") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(f"slide not found: {self.path}")
        if not self.path.is_file():
            raise SlideError(f"not a file: {self.path}")
        order = ["openslide", "tiffslide", "tifffile"] if backend == "auto" else [backend]
        name = self.path.name.lower()
        if backend == "auto" and (name.endswith(".ome.tif") or name.endswith(".ome.tiff")):
            order = ["tiffslide", "openslide", "tifffile"]
        errors = []
        for b in order:
            try:
                getattr(self, f"_open_{b}")()
                self.backend = b
                self._probe()  # a backend that opens a file but cannot decode its pixels is no backend for it
                break
            except Exception as exc:  # noqa: BLE001 - try the next backend, report all at the end
                errors.append(f"{b}: {type(exc).__name__}: {_first_line(exc)}")
                self._close_quietly()
        else:
            raise SlideError(f"cannot open slide {self.path} ({'; '.join(errors)})")
        if mpp is not None:
            if not mpp > 0:
                raise SlideError(f"mpp must be > 0, got {mpp}")
            self.mpp, self.mpp_source = float(mpp), "user"
        else:
            meta = self._metadata_mpp()
            if meta is not None and meta > 0:
                self.mpp, self.mpp_source = float(meta), "metadata"
            else:
                self.mpp, self.mpp_source = DEFAULT_MPP, "default"
                warnings.warn(
                    f"{self.path.name}: no microns-per-pixel in the slide metadata; assuming "
                    f"{DEFAULT_MPP} µm/px (40x). Pass mpp=... (CLI: --mpp) if that is wrong.",
                    MissingMppWarning,
                    stacklevel=2,
                )

    def _probe(self) -> None:
        """Decode one pixel of the smallest level (one tile), so that a backend which opens the file but cannot
        read its samples (OpenSlide and 32-bit float TIFFs) gives way to the next one."""
        k = self.level_count - 1
        if any(d <= 0 for d in self.level_dimensions[k]) or any(d <= 0 for d in self.dimensions):
            raise SlideError(f"the slide declares an empty level ({self.level_dimensions})")
        self.read_region(0, 0, 1, 1, k)

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a backend that failed to open may be half set up
            pass
        self._h, self._tif = None, None

    # ---------------------------------------------------------------- backends
    def _open_openslide(self) -> None:
        import openslide

        s = openslide.OpenSlide(str(self.path))
        self._h = s
        self.level_dimensions = [tuple(map(int, d)) for d in s.level_dimensions]
        self.level_downsamples = [float(d) for d in s.level_downsamples]
        self.properties = dict(s.properties)

    def _open_tiffslide(self) -> None:
        import tiffslide

        s = tiffslide.TiffSlide(str(self.path))
        self._h = s
        self.level_dimensions = [tuple(map(int, d)) for d in s.level_dimensions]
        self.level_downsamples = [float(d) for d in s.level_downsamples]
        self.properties = dict(s.properties)

    def _open_tifffile(self) -> None:
        import tifffile
        import zarr

        tif = tifffile.TiffFile(self.path)
        self._tif = tif  # closed by close() / _close_quietly() whatever happens below
        series = tif.series[0]
        levels = list(series.levels) if series.levels else [series]
        self._tif = tif
        self._arrays = [zarr.open_array(series.aszarr(level=k), mode="r") for k in range(len(levels))]
        self._axes = [lv.axes for lv in levels]
        dims = []
        for lv in levels:
            shape = dict(zip(lv.axes, lv.shape))
            dims.append((int(shape["X"]), int(shape["Y"])))
        self.level_dimensions = dims
        self.level_downsamples = [dims[0][0] / d[0] for d in dims]
        self.properties = {}
        self._h = None

    def _metadata_mpp(self) -> float | None:
        """The slide's own µm/px when plausible (:func:`~histosam.io.images.plausible_mpp`: backends read
        TIFF resolution tags too, and a 72-dpi tag is a print resolution, not a pixel size)."""
        for key in ("openslide.mpp-x", "tiffslide.mpp-x"):
            v = self.properties.get(key)
            if v not in (None, ""):
                try:
                    return plausible_mpp(float(v))
                except ValueError:
                    pass
        return plausible_mpp(tiff_mpp(self.path))

    # ---------------------------------------------------------------- reading
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    def read_region(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """Read ``w x h`` level pixels whose top-left corner is level-0 pixel ``(x, y)``.

        Returns ``h x w x 3 uint8`` RGB; parts outside the slide are white.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(f"level {level} out of range (slide has {self.level_count})")
        if w <= 0 or h <= 0:
            raise SlideError(f"empty region {w}x{h}")
        # clip to the level so that no backend returns tile padding beyond the image edge
        ds = self.level_downsamples[level]
        lx, ly = int(np.floor(x / ds)), int(np.floor(y / ds))
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), 255, np.uint8)
        xa, ya, xb, yb = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if xa >= xb or ya >= yb:
            return out
        try:
            if self.backend == "tifffile":
                block = self._read_tifffile(xa, ya, xb, yb, level)
            else:
                x0 = int(x) if xa == lx else int(round(xa * ds))
                y0 = int(y) if ya == ly else int(round(ya * ds))
                block = _to_rgb(np.asarray(self._h.read_region((x0, y0), level, (xb - xa, yb - ya))))
        except (SlideError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise anything on damaged data
            raise SlideError(
                f"{self.path.name}: cannot read level {level} pixels ({xa}, {ya})-({xb}, {yb}) with {self.backend}: "
                f"{type(exc).__name__}: {_first_line(exc)} (a truncated or damaged file, or samples this backend "
                "cannot decode)") from exc
        out[ya - ly : yb - ly, xa - lx : xb - lx] = block
        return out

    def _read_tifffile(self, xa: int, ya: int, xb: int, yb: int, level: int) -> np.ndarray:
        arr, axes = self._arrays[level], self._axes[level]
        index = tuple(
            slice(ya, yb) if a == "Y" else slice(xa, xb) if a == "X" else slice(None) if a == "S" else 0
            for a in axes
        )
        return _to_rgb(np.asarray(arr[index]))

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (1 % tolerance)."""
        best = 0
        for k, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01 and d >= self.level_downsamples[best]:
                best = k
        return best

    def read_at_mpp(self, x: float, y: float, w: int, h: int, target_mpp: float) -> np.ndarray:
        """Read a region in the *working frame* at ``target_mpp`` µm/px.

        Working pixel ``(x, y)`` corresponds to level-0 pixel ``(x * s, y * s)`` with
        ``s = target_mpp / self.mpp``. Returns ``h x w x 3 uint8``; outside the slide is white.
        The best pyramid level (coarsest not coarser than the target) is read and resampled with
        area averaging (downscale) or bilinear interpolation (upscale).
        """
        s = target_mpp / self.mpp
        if abs(s - 1.0) < 1e-6:
            return self.read_region(int(round(x)), int(round(y)), w, h, 0)
        level = self.best_level(s)
        ds = self.level_downsamples[level]
        x0, y0 = x * s, y * s  # level-0 box
        lx0, ly0 = int(np.floor(x0 / ds)), int(np.floor(y0 / ds))
        lx1, ly1 = int(np.ceil((x0 + w * s) / ds)) + 1, int(np.ceil((y0 + h * s) / ds)) + 1
        src = self.read_region(int(round(lx0 * ds)), int(round(ly0 * ds)), lx1 - lx0, ly1 - ly0, level)
        if abs(s / ds - 1.0) < 1e-6 and lx0 * ds == x0 and ly0 * ds == y0:
            return np.ascontiguousarray(src[:h, :w])
        return _resample(src, (x0 / ds - lx0, y0 / ds - ly0), s / ds, w, h)

    def thumbnail(self, target_mpp: float) -> np.ndarray:
        """The whole slide at ``target_mpp`` µm/px (``H x W x 3 uint8``), for tissue detection and overlays.

        Bounded work (:data:`THUMB_READ_BUDGET`): the best pyramid level is read whole when that is at most the
        budget, or at most four times it from a level at most 4x finer than the thumbnail (a pyramid's next
        level). Otherwise (no suitable level: a big slide without a pyramid, or tags that declare far more
        pixels than the file holds) a strided sample of whole storage tiles is read, one per cell of a grid
        over the level, each drawn at its place with its edges extended over the rest of its cell
        (:class:`SampledThumbnailWarning`, at most :data:`THUMB_SAMPLE_BUDGET` pixels decoded); never the whole
        level 0. A thumbnail of more than :data:`MAX_THUMB_PIXELS` pixels, or storage segments too large to sample
        within the budget (one strip holding the whole image), is a :class:`~histosam.errors.SlideError`.
        """
        if not target_mpp > 0:
            raise SlideError(f"thumbnail resolution must be > 0 µm/px, got {target_mpp}")
        s = target_mpp / self.mpp
        w0, h0 = self.dimensions
        w, h = max(1, int(round(w0 / s))), max(1, int(round(h0 / s)))
        if w * h > MAX_THUMB_PIXELS:
            raise SlideError(
                f"{self.path.name}: declares {w0} x {h0} px at {self.mpp:g} µm/px ({w0 * self.mpp / 1000:.0f} x "
                f"{h0 * self.mpp / 1000:.0f} mm), too large for any glass slide: its thumbnail at {target_mpp:g} "
                f"µm/px would have {w * h / 1e6:.0f} Mpx (at most {MAX_THUMB_PIXELS / 1e6:.0f}); check the file "
                "and its pixel size (--mpp)")
        level = self.best_level(s)
        r = s / self.level_downsamples[level]  # level pixels per thumbnail pixel (per axis)
        read = w * h * r * r
        if read <= THUMB_READ_BUDGET or (r <= 4.0 and read <= 4 * THUMB_READ_BUDGET):
            return self._thumbnail_exact(target_mpp, w, h)
        return self._thumbnail_sampled(level, r, w, h, target_mpp)

    def _thumbnail_exact(self, target_mpp: float, w: int, h: int) -> np.ndarray:
        s = target_mpp / self.mpp
        out = np.empty((h, w, 3), np.uint8)
        # strips keep the level read (4 MB of uint8, ~50 MB once resampled in float) bounded
        row_bytes = (s / self.level_downsamples[self.best_level(s)]) ** 2 * w * 3
        rows = max(16, min(h, int(4 * 2**20 / max(row_bytes, 1.0))))
        for y in range(0, h, rows):
            n = min(rows, h - y)
            out[y : y + n] = self.read_at_mpp(0, y, w, n, target_mpp)
        return out

    def segment_shape(self, level: int) -> tuple[int, int] | None:
        """``(height, width)`` in level pixels of the storage unit (tile or strip) a read of ``level`` decodes
        whole; ``None`` when the backend does not say."""
        if self.backend == "openslide":
            th = self.properties.get(f"openslide.level[{level}].tile-height")
            tw = self.properties.get(f"openslide.level[{level}].tile-width")
            try:
                return (int(th), int(tw)) if th and tw and int(th) > 0 and int(tw) > 0 else None
            except ValueError:
                return None
        try:
            import tifffile

            with tifffile.TiffFile(self.path) as tif:
                levels = list(tif.series[0].levels) or [tif.series[0]]
                if len(levels) != self.level_count:
                    return None
                page = levels[level].keyframe
                lw, lh = self.level_dimensions[level]
                if page.is_tiled:
                    return int(page.tilelength), int(page.tilewidth)
                rows = int(page.rowsperstrip or lh)
                return min(max(rows, 1), lh), lw
        except Exception:  # noqa: BLE001 - unknown layout: assume tiles
            return None

    def _thumbnail_sampled(self, level: int, r: float, w: int, h: int, target_mpp: float) -> np.ndarray:
        """Thumbnail from a strided sample of storage tiles of ``level`` (see :meth:`thumbnail`)."""
        from PIL import Image

        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        seg = self.segment_shape(level) or (256, 256)
        seg_h, seg_w = min(max(seg[0], 1), lh), min(max(seg[1], 1), lw)
        # one sample = whole segments: at least THUMB_PATCH px wide, then enough rows for THUMB_PATCH² px (one
        # strip of a wide stripped image is a sample; clipped to the level)
        pw = min(lw, -(-min(THUMB_PATCH, lw) // seg_w) * seg_w)
        ph = min(lh, -(-min(-(-THUMB_PATCH**2 // pw), lh) // seg_h) * seg_h)
        n_cells = int(THUMB_SAMPLE_BUDGET // (ph * pw))
        if n_cells < MIN_THUMB_CELLS:
            raise SlideError(
                f"{self.path.name}: {lw} x {lh} px stored in segments of {seg_w} x {seg_h} px, without a pyramid "
                f"level near {target_mpp:g} µm/px: a thumbnail would decode {lw * lh / 1e6:.0f} Mpx, and a sample of "
                f"{MIN_THUMB_CELLS} segments {MIN_THUMB_CELLS * ph * pw / 1e6:.0f} Mpx (at most "
                f"{THUMB_SAMPLE_BUDGET / 1e6:.0f}); convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave IN "
                "OUT.tif --tile --pyramid`)")
        npy, npx = -(-lh // ph), -(-lw // pw)  # grid of sample blocks over the level
        side = max(1.0, (npy * npx / n_cells) ** 0.5)
        ky, kx = max(1, min(npy, int(side))), max(1, min(npx, int(side)))
        while -(-npy // ky) * -(-npx // kx) > n_cells:
            if (ky * ph <= kx * pw and ky < npy) or kx >= npx:
                ky += 1
            else:
                kx += 1
        out = np.full((h, w, 3), 255, np.uint8)
        for cy in range(0, npy, ky):
            for cx in range(0, npx, kx):
                # the cell covers blocks [cy, cy+ky) x [cx, cx+kx); its middle block is read
                by, bx = min(cy + ky // 2, npy - 1), min(cx + kx // 2, npx - 1)
                y0, x0 = by * ph, bx * pw
                ph_, pw_ = min(ph, lh - y0), min(pw, lw - x0)
                patch = self.read_region(int(round(x0 * ds)), int(round(y0 * ds)), pw_, ph_, level)
                # the cell's box in thumbnail pixels
                ta, tb = _clip_span(cy * ph / r, min((cy + ky) * ph, lh) / r, h)
                la, lb = _clip_span(cx * pw / r, min((cx + kx) * pw, lw) / r, w)
                # the sample at its own place in the cell, the rest of the cell filled by extending its edges
                pa, pb = _clip_span(y0 / r, (y0 + ph_) / r, h)
                qa, qb = _clip_span(x0 / r, (x0 + pw_) / r, w)
                pa, pb, qa, qb = max(pa, ta), min(pb, tb), max(qa, la), min(qb, lb)
                if pb > pa and qb > qa:
                    small = np.asarray(Image.fromarray(patch).resize((qb - qa, pb - pa), Image.Resampling.BOX))
                    out[ta:tb, la:lb] = np.pad(small, ((pa - ta, tb - pb), (qa - la, lb - qb), (0, 0)), mode="edge")
                else:  # the sample is smaller than one thumbnail pixel: its mean colour
                    out[ta:tb, la:lb] = patch.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
        n_read = -(-npy // ky) * -(-npx // kx)
        warnings.warn(
            f"{self.path.name}: no pyramid level near {target_mpp:g} µm/px; the thumbnail is sampled from "
            f"{n_read} of {npy * npx} blocks of {pw} x {ph} px (tissue detection is approximate; "
            "--no-tissue-mask processes the whole slide)", SampledThumbnailWarning, stacklevel=2)
        return out

    def close(self) -> None:
        if self._h is not None:
            self._h.close()
        if getattr(self, "_tif", None) is not None:
            self._tif.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SlideReader({self.path.name!r}, backend={self.backend}, levels={self.level_dimensions}, "
            f"mpp={self.mpp:g} ({self.mpp_source}))"
        )


def _clip_span(a: float, b: float, n: int) -> tuple[int, int]:
    """``[round(a), round(b))`` clipped to ``[0, n]``, at least one pixel long where room allows."""
    ia, ib = min(max(int(round(a)), 0), n), min(max(int(round(b)), 0), n)
    if ib <= ia and ia < n:
        ib = ia + 1
    return ia, ib


def _resample(src: np.ndarray, offset: tuple[float, float], scale: float, w: int, h: int) -> np.ndarray:
    """Sample ``h x w`` output pixels; output pixel ``(i, j)`` covers source box starting at
    ``offset + (j, i) * scale`` of side ``scale`` (source pixel units). Area mean when
    ``scale > 1``, bilinear at pixel centres otherwise."""
    from scipy import ndimage

    srcf = src.astype(np.float32)
    if scale > 1.0:
        k = int(np.ceil(scale))
        # box-average with an integer kernel then sample at box centres (good enough, fast)
        srcf = ndimage.uniform_filter(srcf, size=(k, k, 1), mode="nearest")
    cy = offset[1] + (np.arange(h) + 0.5) * scale - 0.5
    cx = offset[0] + (np.arange(w) + 0.5) * scale - 0.5
    out = np.empty((h, w, 3), np.float32)
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    for c in range(3):
        out[..., c] = ndimage.map_coordinates(srcf[..., c], [yy, xx], order=1, mode="nearest")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def open_slide(path: str | os.PathLike, mpp: float | None = None, backend: str = "auto") -> SlideReader:
    """Open a slide (see :class:`SlideReader`); raises :class:`~histosam.errors.SlideError`."""
    return SlideReader(path, mpp=mpp, backend=backend)
