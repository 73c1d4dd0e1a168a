"""The malformed-input corpus: every case is generated in code (no committed data) and run through the real
command line (``histosam.cli.main.main``).

A :class:`CliCase` writes its inputs into a fresh folder and returns a :class:`Spec`: the argv, the output folder,
how many inputs must fail (one error line each) and which must succeed. ``expect``: ``"fail"`` (the subject input
is refused: exit code 1 or 2, one error line), ``"ok"`` (a valid input: exit code 0, a complete output set) or
``"any"`` (either is acceptable, e.g. a decoder that reads a damaged file leniently); the contract checks of
:mod:`harness` apply to every outcome. ``xfail`` names a known defect (the test is ``xfail(strict=True)``).

HTTP bodies are :class:`HttpCase` objects sent with FastAPI's TestClient to ``histosam.server.create_app``.

Categories: ``images`` (``histosam segment``), ``slides`` (``histosam slide``), ``checkpoints``
(``histosam segment --model FILE``), ``configs`` (``histosam train``), ``options`` (bad option values of
segment/slide), ``http``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import pickle
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from crafting import (
    bmp_with_size,
    craft_tiff,
    flip_bytes,
    he_image,
    jpeg_bytes,
    jpeg_with_size,
    pil_bytes,
    png_bytes,
    png_with_header,
    tiff_bytes,
    tiff_segment_ranges,
    truncate,
    zlib_tile,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = REPO / "src" / "histosam" / "weights" / "histosam-nano.pt"


@dataclass
class Ctx:
    """Shared, session-wide inputs: ``model`` is a random histosam-nano in histosam's format (fast maps in
    tests), ``tiny_model`` a random ``tiny`` SAM without an instance decoder."""

    model: Path
    tiny_model: Path
    pickle_marker: Path


@dataclass
class Spec:
    argv: list[str]
    out: Path | None
    n_fail: int = 1
    ok_inputs: list[Path] = field(default_factory=list)
    fail_stems: list[str] = field(default_factory=list)
    check: Callable[[], list[str]] | None = None  # extra problems to report (e.g. a pickle payload that ran)


@dataclass
class CliCase:
    id: str
    category: str
    make: Callable[[Path, Ctx], Spec]
    expect: str = "fail"
    match: str | None = None
    xfail: str | None = None
    slow: bool = False


@dataclass
class HttpCase:
    id: str
    method: str
    path: str
    body: Any = None  # dict/list -> JSON; bytes/str -> raw content
    headers: dict[str, str] = field(default_factory=dict)
    expect: str = "fail"  # "fail": a 4xx JSON {"detail": one line}; "ok": 200
    match: str | None = None
    status: int | None = None  # the exact status expected instead (e.g. 501 for unsupported endpoints)
    xfail: str | None = None
    category: str = "http"


# ---------------------------------------------------------------------------------------------------- defects
#: known defects (reported, not fixed here): the cases naming them are xfail(strict=True) and pass once fixed
JPEG_SHORT_SCAN = None  # fixed in session 7 (was: a known defect; the case now holds)

TIFF_JPEG_SHORT = None  # fixed in session 7 (was: a known defect; the case now holds)
SYMLINK_LOOP = None  # fixed in session 7 (was: a known defect; the case now holds)
NO_INPUTS_TWO_LINES = None  # fixed in session 7 (was: a known defect; the case now holds)
LONG_NAME_EMPTY_DIR = None  # fixed in session 7 (was: a known defect; the case now holds)

OUTPUT_NAME_TOO_LONG = None  # fixed in session 7 (was: a known defect; the case now holds)

SLIDE_LIMITS = None  # fixed in session 7 (was: a known defect; the case now holds)
SLIDE_TARGET_MPP = None  # fixed in session 7 (was: a known defect; the case now holds)
ROI_NAN = None  # fixed in session 7 (was: a known defect; the case now holds)
AMG_PPS_0 = None  # fixed in session 7 (was: a known defect; the case now holds)
DEVICE = None  # fixed in session 7 (was: a known defect; the case now holds)
MPP_TINY = None  # fixed in session 7 (was: a known defect; the case now holds)
SEG_HALO = None  # fixed in session 7 (was: a known defect; the case now holds)

SERVER_NAN_TIFF = None  # fixed in session 7 (was: a known defect; the case now holds)

NEWLINE_NAME = None  # fixed in session 7 (was: a known defect; the case now holds)

# ---------------------------------------------------------------------------------------------------- helpers
GOOD = he_image(64, 72, 0)


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def _segment_argv(inputs: list[str | Path], out: Path, model: Path | str | None, *extra: str) -> list[str]:
    argv = ["segment", *map(str, inputs), "-o", str(out), "--no-progress"]
    if model is not None:
        argv += ["--model", str(model)]
    return argv + list(extra)


def image_case(name: str, data: bytes | Callable[[], bytes], suffix: str, expect: str = "fail",
               match: str | None = None, extra: tuple[str, ...] = (), xfail: str | None = None) -> CliCase:
    """One image file (``data``) named ``<name><suffix>`` segmented alone."""
    stem = name.replace("/", "_")

    def make(root: Path, ctx: Ctx) -> Spec:
        path = _write(root / "in" / f"{stem}{suffix}", data() if callable(data) else data)
        out = root / "out"
        ok = [path] if expect == "ok" else []
        return Spec(_segment_argv([path], out, ctx.model, *extra), out, ok_inputs=ok,
                    fail_stems=[stem] if expect == "fail" else [])

    return CliCase(f"images/{name}{suffix}", "images", make, expect, match, xfail)


def _arr_tiff(arr: np.ndarray, **kw) -> Callable[[], bytes]:
    return lambda: tiff_bytes(arr, **kw)


# ---------------------------------------------------------------------------------------------------- images
def image_cases() -> list[CliCase]:
    cases: list[CliCase] = []
    g = GOOD
    encoders: dict[str, tuple[str, Callable[[], bytes]]] = {
        "png": (".png", lambda: png_bytes(g)),
        "jpeg": (".jpg", lambda: jpeg_bytes(g)),
        "jpeg-progressive": (".jpg", lambda: jpeg_bytes(g, progressive=True)),
        "tiff": (".tif", lambda: tiff_bytes(g, photometric="rgb")),
        "tiff-zlib": (".tif", lambda: tiff_bytes(g, photometric="rgb", compression="zlib")),
        "tiff-tiled": (".tif", lambda: tiff_bytes(np.pad(g, ((0, 0), (0, 8), (0, 0))), photometric="rgb",
                                                  tile=(16, 16), compression="zlib")),
        "tiff-jpeg": (".tif", lambda: tiff_bytes(g, photometric="rgb", compression="jpeg")),
        "bmp": (".bmp", lambda: pil_bytes(g, "BMP")),
        "webp": (".webp", lambda: pil_bytes(g, "WEBP", lossless=True)),
    }
    # truncated files: header only, 10 %, 50 %, 90 %, all but the last byte
    for fmt, (suffix, enc) in encoders.items():
        for label, frac in (("8bytes", 8), ("10pct", 0.1), ("50pct", 0.5), ("90pct", 0.9), ("minus1", -1)):
            expect = "fail"
            if label == "minus1" and fmt in ("png", "jpeg", "jpeg-progressive", "tiff", "tiff-zlib", "tiff-tiled",
                                             "tiff-jpeg", "webp"):
                expect = "any"  # the last byte is a trailer (IEND CRC / EOI / padding): decoders may not need it
            if fmt in ("tiff", "tiff-zlib", "tiff-tiled", "tiff-jpeg") and label in ("90pct",):
                expect = "any"  # the IFD is written after the data by tifffile: 90 % may still hold it
            if fmt == "bmp" and label in ("90pct", "minus1"):
                expect = "any"
            xf = TIFF_JPEG_SHORT if (fmt, label) == ("tiff-jpeg", "50pct") else None
            cases.append(image_case(f"truncated-{fmt}-{label}", (lambda e=enc, f=frac: truncate(e(), f)), suffix,
                                    expect, xfail=xf))
    # zero-size files
    for suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".PNG", ".gif"):
        cases.append(image_case("zero-size", b"", suffix, "fail"))
    # tiny and degenerate shapes: valid images, a result (0 or more nuclei) is expected
    for h, w in ((1, 1), (1, 2), (2, 1), (2, 2), (1, 300), (300, 1), (3, 1000), (1000, 3), (15, 15), (16, 16),
                 (17, 17), (1, 5000)):
        cases.append(image_case(f"shape-{h}x{w}", (lambda h=h, w=w: png_bytes(he_image(h, w, 1))), ".png", "ok"))
    cases.append(image_case("shape-1x1", lambda: tiff_bytes(np.zeros((1, 1, 3), np.uint8), photometric="rgb"),
                            ".tif", "ok"))
    cases.append(image_case("shape-1x1", lambda: jpeg_bytes(np.zeros((1, 1, 3), np.uint8)), ".jpg", "ok"))
    # huge declared dimensions in tiny files
    cases += [
        image_case("huge-png-100000x100000", png_with_header(100000, 100000), ".png", "fail", "pixels"),
        image_case("huge-png-20000x20000", png_with_header(20000, 20000), ".png", "fail", "pixels"),
        image_case("huge-png-12000x12000-nodata", png_with_header(12000, 12000), ".png", "fail"),
        image_case("huge-png-65535x1-nodata", png_with_header(65535, 1), ".png", "any"),
        image_case("huge-jpeg-60000x50000", lambda: jpeg_with_size(g, 60000, 50000), ".jpg", "fail", "pixels"),
        image_case("huge-jpeg-4000x4000-scan-ends-early", lambda: jpeg_with_size(g, 4000, 4000), ".jpg", "fail",
                   xfail=JPEG_SHORT_SCAN),
        image_case("huge-bmp-20000x20000", bmp_with_size(20000, 20000), ".bmp", "fail"),
        image_case("huge-tiff-100000x100000", lambda: craft_tiff(100000, 100000), ".tif", "fail", "Mpx"),
        image_case("huge-tiff-30000x30000-tiled", lambda: craft_tiff(30000, 30000, tile=(256, 256),
                                                                     segment=zlib_tile(256, 256), compression=8),
                   ".tif", "fail", "Mpx"),
        image_case("huge-tiff-12000x12000-nodata", lambda: craft_tiff(12000, 12000), ".tif", "fail"),
        image_case("huge-tiff-4000x4000-zero-bytecounts",
                   lambda: craft_tiff(4000, 4000, tile=(512, 512), bytecounts=[0] * 64), ".tif", "any"),
    ]
    # wrong suffix for the content
    cases += [
        image_case("png-named", lambda: png_bytes(g), ".jpg", "ok"),
        image_case("png-named", lambda: png_bytes(g), ".tif", "fail"),
        image_case("png-named", lambda: png_bytes(g), ".tiff", "fail"),
        image_case("png-named", lambda: png_bytes(g), ".bmp", "ok"),
        image_case("jpeg-named", lambda: jpeg_bytes(g), ".png", "ok"),
        image_case("jpeg-named", lambda: jpeg_bytes(g), ".tif", "fail"),
        image_case("tiff-named", lambda: tiff_bytes(g, photometric="rgb"), ".png", "ok"),
        image_case("tiff-named", lambda: tiff_bytes(g, photometric="rgb"), ".jpg", "ok"),
        image_case("bmp-named", lambda: pil_bytes(g, "BMP"), ".png", "ok"),
        image_case("webp-named", lambda: pil_bytes(g, "WEBP", lossless=True), ".png", "ok"),
        image_case("gif-named", lambda: pil_bytes(g, "GIF"), ".png", "ok"),
        image_case("png-named", lambda: png_bytes(g), ".txt", "ok"),
        image_case("png-no-suffix", lambda: png_bytes(g), "", "ok"),
        image_case("png-double", lambda: png_bytes(g), ".png.png", "ok"),
    ]
    # text and junk with image suffixes
    rng = np.random.default_rng(7)
    junk = {
        "text": b"this is not an image\n",
        "html": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
        "json": b'{"image": [1, 2, 3]}\n',
        "random-1k": rng.bytes(1024),
        "random-1m": rng.bytes(1 << 20),
        "png-signature-then-junk": b"\x89PNG\r\n\x1a\n" + rng.bytes(200),
        "jpeg-soi-then-junk": b"\xff\xd8\xff\xe0" + rng.bytes(200),
        "tiff-magic-then-junk": b"II*\x00" + rng.bytes(200),
        "tiff-ifd-beyond-eof": b"II*\x00" + struct.pack("<I", 10**8) + b"\0" * 16,
        "bigtiff-magic-then-junk": b"II+\x00\x08\x00\x00\x00" + rng.bytes(200),
        "nul-bytes": b"\0" * 4096,
    }
    for name, data in junk.items():
        for suffix in (".png", ".jpg", ".tif"):
            cases.append(image_case(f"junk-{name}", data, suffix, "fail"))
    cases += [
        image_case("tiff-ifd-loop", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(), loop_ifd=True),
                   ".tif", "ok"),
        image_case("tiff-next-ifd-beyond-eof", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                                   next_ifd_beyond_eof=True), ".tif", "ok"),
        image_case("tiff-strip-offset-beyond-eof", lambda: craft_tiff(64, 48, offsets=[10**7]), ".tif", "fail"),
        image_case("tiff-strip-short", lambda: craft_tiff(64, 48, segment=b"\x80" * 100), ".tif", "fail"),
        image_case("tiff-bad-zlib", lambda: craft_tiff(64, 48, segment=b"\x78\x9c" + b"\x13" * 50, compression=8),
                   ".tif", "fail"),
        image_case("tiff-unknown-compression", lambda: craft_tiff(64, 48, segment=b"\0" * 64, compression=12345),
                   ".tif", "fail"),
        image_case("tiff-bits-3", lambda: craft_tiff(64, 48, bits=3, segment=b"\0" * 64 * 48 * 3), ".tif", "any"),
        image_case("tiff-zero-width", lambda: craft_tiff(0, 48), ".tif", "fail"),
        image_case("tiff-zero-height", lambda: craft_tiff(64, 0), ".tif", "fail"),
        image_case("tiff-tile-zero", lambda: craft_tiff(64, 48, tile=(0, 0)), ".tif", "fail"),
    ]
    # dtypes and sample formats
    gray16 = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21)
    f01 = g.astype(np.float32) / 255.0

    def with_value(v: float) -> np.ndarray:
        a = f01.copy()
        a[5:9, 5:9] = v
        return a

    cases += [
        image_case("uint16-gray", _arr_tiff(gray16), ".tif", "ok"),
        image_case("uint16-rgb", _arr_tiff(g.astype(np.uint16) * 257, photometric="rgb"), ".tif", "ok"),
        image_case("uint16-rgba", _arr_tiff(np.dstack([g.astype(np.uint16) * 257, np.full(g.shape[:2], 65535,
                                                                                         np.uint16)]),
                                            photometric="rgb", extrasamples=[2]), ".tif", "ok"),
        image_case("png16-gray", lambda: png_bytes(gray16), ".png", "ok"),
        image_case("int8", _arr_tiff((g.astype(np.int16) - 128).astype(np.int8), photometric="rgb"), ".tif", "ok"),
        image_case("int16-negative", _arr_tiff(g.astype(np.int16) - 300, photometric="rgb"), ".tif", "ok"),
        image_case("int32", _arr_tiff(g.astype(np.int32) * 1000, photometric="rgb"), ".tif", "ok"),
        image_case("uint32", _arr_tiff(g.astype(np.uint32), photometric="rgb"), ".tif", "ok"),
        image_case("int64", _arr_tiff(g.astype(np.int64), photometric="rgb"), ".tif", "ok"),
        image_case("float32-01", _arr_tiff(f01, photometric="rgb"), ".tif", "ok"),
        image_case("float32-0-255", _arr_tiff(g.astype(np.float32), photometric="rgb"), ".tif", "ok"),
        image_case("float64", _arr_tiff(f01.astype(np.float64), photometric="rgb"), ".tif", "ok"),
        image_case("float16", _arr_tiff(f01.astype(np.float16), photometric="rgb"), ".tif", "ok"),
        image_case("float32-nan", _arr_tiff(with_value(np.nan), photometric="rgb"), ".tif", "fail", "non-finite"),
        image_case("float32-posinf", _arr_tiff(with_value(np.inf), photometric="rgb"), ".tif", "fail", "non-finite"),
        image_case("float32-neginf", _arr_tiff(with_value(-np.inf), photometric="rgb"), ".tif", "fail",
                   "non-finite"),
        image_case("float32-all-nan", _arr_tiff(np.full((48, 64), np.nan, np.float32)), ".tif", "fail",
                   "non-finite"),
        image_case("float32-1e38", _arr_tiff(with_value(1e38), photometric="rgb"), ".tif", "ok"),
        image_case("float32-gray-negative", _arr_tiff(-f01[..., 0]), ".tif", "ok"),
        image_case("complex64", _arr_tiff(f01[..., 0].astype(np.complex64)), ".tif", "fail"),
        image_case("bool", _arr_tiff(g[..., 0] > 128), ".tif", "ok"),
        image_case("png-1bit", lambda: pil_bytes(__import__("PIL.Image").Image.fromarray(g).convert("1"), "PNG"),
                   ".png", "ok"),
        image_case("png-palette", lambda: pil_bytes(__import__("PIL.Image").Image.fromarray(g).convert("P"), "PNG"),
                   ".png", "ok"),
        image_case("png-rgba-transparent", lambda: png_bytes(np.dstack([g, np.zeros(g.shape[:2], np.uint8)])),
                   ".png", "ok"),
        image_case("png-la", lambda: pil_bytes(__import__("PIL.Image").Image.fromarray(g).convert("LA"), "PNG"),
                   ".png", "ok"),
        image_case("jpeg-cmyk", lambda: pil_bytes(__import__("PIL.Image").Image.fromarray(g).convert("CMYK"),
                                                  "JPEG"), ".jpg", "ok"),
        image_case("jpeg-gray", lambda: jpeg_bytes(g[..., 0]), ".jpg", "ok"),
        image_case("tiff-ycbcr-jpeg", _arr_tiff(g, photometric="ycbcr", compression="jpeg"), ".tif", "ok"),
        image_case("tiff-palette", _arr_tiff(g[..., 0], photometric="palette",
                                             colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))),
                   ".tif", "ok"),
        image_case("tiff-miniswhite", _arr_tiff(g[..., 0], photometric="miniswhite"), ".tif", "ok"),
    ]
    # channels and dimensions
    cases += [
        image_case("channels-5", _arr_tiff(np.dstack([g, g[..., :2]]), photometric="minisblack", planarconfig=
                                           "contig"), ".tif", "fail", "shape"),
        image_case("channels-6", _arr_tiff(np.dstack([g, g]), photometric="minisblack", planarconfig="contig"),
                   ".tif", "fail", "shape"),
        image_case("channels-2", _arr_tiff(g[..., :2], photometric="minisblack", planarconfig="contig"), ".tif",
                   "ok"),
        image_case("channels-first-3", _arr_tiff(np.moveaxis(g, -1, 0), photometric="minisblack"), ".tif", "ok"),
        image_case("channels-first-5", _arr_tiff(np.moveaxis(np.dstack([g, g[..., :2]]), -1, 0),
                                                 photometric="minisblack"), ".tif", "fail", "shape"),
        image_case("channels-first-4", _arr_tiff(np.moveaxis(np.dstack([g, g[..., :1]]), -1, 0),
                                                 photometric="minisblack"), ".tif", "ok"),
        image_case("stack-2x-rgb", _arr_tiff(np.stack([g, g]), photometric="rgb"), ".tif", "fail", "shape"),
        image_case("stack-4d-1x1", _arr_tiff(g[None, None, ..., 0]), ".tif", "any"),
        image_case("ome-5-channels", _arr_tiff(np.moveaxis(np.dstack([g, g[..., :2]]), -1, 0), ome=True,
                                               metadata={"axes": "CYX"}), ".ome.tif", "fail", "shape"),
        image_case("multipage-different-shapes", lambda: _multipage(g), ".tif", "ok"),
        image_case("volume-zyx", _arr_tiff(np.stack([g[..., 0]] * 7), photometric="minisblack"), ".tif", "fail",
                   "shape"),
    ]
    # stated pixel sizes, wrong or absurd
    cases += [
        image_case("jpeg-exif-72dpi", lambda: jpeg_bytes(g, dpi=(72, 72)), ".jpg", "ok"),
        image_case("jpeg-dpi-0", lambda: jpeg_bytes(g, dpi=(0, 0)), ".jpg", "ok"),
        image_case("jpeg-exif-garbage", lambda: jpeg_bytes(g, exif=b"Exif\x00\x00" + b"\xff" * 64), ".jpg", "ok"),
        image_case("jpeg-exif-resolution-absurd", lambda: _jpeg_with_exif_resolution(g), ".jpg", "ok"),
        image_case("tiff-resolution-0-over-0", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                                  resolution=((0, 0), 3)), ".tif", "ok"),
        image_case("tiff-resolution-72dpi", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                               resolution=((72, 1), 2)), ".tif", "ok"),
        image_case("tiff-resolution-1e-9", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                              resolution=((1, 10**9), 3)), ".tif", "ok"),
        image_case("tiff-mpp-19-upsample-76x", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                                  resolution=((10000, 19), 3)), ".tif", "fail",
                   "upsample"),
        image_case("tiff-mpp-0.021-downsample", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                                   resolution=((10000 * 1000, 21), 3)), ".tif",
                   "ok"),
        image_case("aperio-mpp-nan", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                        description="Aperio Image|MPP = nan"), ".tif", "ok"),
        image_case("aperio-mpp-negative", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                             description="Aperio Image|MPP = -0.25"), ".tif", "ok"),
        image_case("aperio-mpp-huge", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                         description="Aperio Image|MPP = 1e400"), ".tif", "ok"),
        image_case("ome-physicalsize-garbage", lambda: _ome_with_size(g, 'PhysicalSizeX="abc"'), ".ome.tif", "ok"),
        image_case("ome-physicalsize-zero", lambda: _ome_with_size(g, 'PhysicalSizeX="0"'), ".ome.tif", "ok"),
        image_case("ome-physicalsize-mm", lambda: _ome_with_size(g, 'PhysicalSizeX="0.25" PhysicalSizeXUnit="mm"'),
                   ".ome.tif", "ok"),
        image_case("ome-xml-broken", lambda: craft_tiff(64, 48, segment=GOOD[:48, :64].tobytes(),
                                                        description='<?xml version="1.0"?><OME><Image><Pixels '),
                   ".ome.tif", "ok"),
    ]
    cases += path_cases()
    cases += multi_input_cases()
    return cases


def _multipage(g: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:
        tif.write(g, photometric="rgb")
        tif.write(g[:10, :20], photometric="rgb")
    return buf.getvalue()


def _ome_with_size(g: np.ndarray, attrs: str) -> bytes:
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           f'<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="{g.shape[1]}" '
           f'SizeY="{g.shape[0]}" SizeC="3" SizeZ="1" SizeT="1" {attrs}><Channel ID="Channel:0:0" '
           'SamplesPerPixel="3"/><TiffData/></Pixels></Image></OME>')
    return craft_tiff(g.shape[1], g.shape[0], segment=g.tobytes(), description=xml)


def _jpeg_with_exif_resolution(g: np.ndarray) -> bytes:
    from PIL import Image

    im = Image.fromarray(g)
    exif = Image.Exif()
    exif[282] = 1e-9  # XResolution
    exif[283] = 1e-9
    exif[296] = 3
    return pil_bytes(im, "JPEG", exif=exif.tobytes())


def path_cases() -> list[CliCase]:
    """File-system oddities: links, folders, names, permissions, output folders."""
    cases: list[CliCase] = []

    def case(name: str, make: Callable[[Path, Ctx], Spec], expect: str = "fail", match: str | None = None,
             xfail: str | None = None) -> None:
        cases.append(CliCase(f"images/{name}", "images", make, expect, match, xfail))

    def dangling(root: Path, ctx: Ctx) -> Spec:
        link = root / "in" / "dangling.png"
        link.parent.mkdir(parents=True)
        link.symlink_to(root / "in" / "nowhere.png")
        return Spec(_segment_argv([link], root / "out", ctx.model), root / "out", fail_stems=["dangling"])

    def loop(root: Path, ctx: Ctx) -> Spec:
        (root / "in").mkdir(parents=True)
        (root / "in" / "a.png").symlink_to(root / "in" / "b.png")
        (root / "in" / "b.png").symlink_to(root / "in" / "a.png")
        return Spec(_segment_argv([root / "in" / "a.png"], root / "out", ctx.model), root / "out")

    def folder_named_png(root: Path, ctx: Ctx) -> Spec:
        (root / "in" / "x.png").mkdir(parents=True)
        return Spec(_segment_argv([root / "in" / "x.png"], root / "out", ctx.model), root / "out")

    def folder_named_png_inside(root: Path, ctx: Ctx) -> Spec:
        (root / "in" / "x.png").mkdir(parents=True)
        good = _write(root / "in" / "good.png", png_bytes(GOOD))
        return Spec(_segment_argv([root / "in"], root / "out", ctx.model), root / "out", n_fail=0,
                    ok_inputs=[good])

    def only_folder_named_png_inside(root: Path, ctx: Ctx) -> Spec:
        (root / "in" / "x.png").mkdir(parents=True)
        return Spec(_segment_argv([root / "in"], root / "out", ctx.model), root / "out")

    def link_to_folder(root: Path, ctx: Ctx) -> Spec:
        (root / "in" / "d").mkdir(parents=True)
        (root / "in" / "d.png").symlink_to(root / "in" / "d")
        return Spec(_segment_argv([root / "in" / "d.png"], root / "out", ctx.model), root / "out")

    def good_symlink(root: Path, ctx: Ctx) -> Spec:
        real = _write(root / "data" / "real.png", png_bytes(GOOD))
        (root / "in").mkdir()
        (root / "in" / "link.png").symlink_to(real)
        return Spec(_segment_argv([root / "in" / "link.png"], root / "out", ctx.model), root / "out", n_fail=0,
                    ok_inputs=[root / "in" / "link.png"])

    def unreadable(root: Path, ctx: Ctx) -> Spec:
        p = _write(root / "in" / "secret.png", png_bytes(GOOD))
        os.chmod(p, 0)
        return Spec(_segment_argv([p], root / "out", ctx.model), root / "out",
                    n_fail=0 if os.geteuid() == 0 else 1, ok_inputs=[p] if os.geteuid() == 0 else [])

    def missing(root: Path, ctx: Ctx) -> Spec:
        return Spec(_segment_argv([root / "nope.png"], root / "out", ctx.model), root / "out")

    def under_a_file(root: Path, ctx: Ctx) -> Spec:
        _write(root / "in" / "file.png", png_bytes(GOOD))
        return Spec(_segment_argv([root / "in" / "file.png" / "x.png"], root / "out", ctx.model), root / "out")

    def glob_nothing(root: Path, ctx: Ctx) -> Spec:
        return Spec(_segment_argv([str(root / "in" / "*.png")], root / "out", ctx.model), root / "out")

    def empty_folder(root: Path, ctx: Ctx) -> Spec:
        (root / "in").mkdir()
        return Spec(_segment_argv([root / "in"], root / "out", ctx.model), root / "out")

    def named(name: str, data: bytes, expect: str) -> Callable[[Path, Ctx], Spec]:
        def make(root: Path, ctx: Ctx) -> Spec:
            p = _write(root / "in" / name, data)
            ok = expect == "ok"
            return Spec(_segment_argv([p], root / "out", ctx.model), root / "out", n_fail=0 if ok else 1,
                        ok_inputs=[p] if ok else [])
        return make

    def out_is_file(root: Path, ctx: Ctx) -> Spec:
        p = _write(root / "in" / "a.png", png_bytes(GOOD))
        _write(root / "out", "a file")
        return Spec(_segment_argv([p], root / "out", ctx.model), None, fail_stems=["a"])

    def out_under_file(root: Path, ctx: Ctx) -> Spec:
        p = _write(root / "in" / "a.png", png_bytes(GOOD))
        _write(root / "blocker", "a file")
        return Spec(_segment_argv([p], root / "blocker" / "out", ctx.model), None)

    def out_name_too_long(root: Path, ctx: Ctx) -> Spec:
        p = _write(root / "in" / "a.png", png_bytes(GOOD))
        return Spec(_segment_argv([p], root / ("o" * 300), ctx.model), root / ("o" * 300))

    def out_in_proc(root: Path, ctx: Ctx) -> Spec:
        p = _write(root / "in" / "a.png", png_bytes(GOOD))
        return Spec(_segment_argv([p], "/proc/histosam-out", ctx.model), None)

    case("dangling-symlink.png", dangling, match="no such file")
    case("symlink-loop.png", loop, xfail=SYMLINK_LOOP)
    case("folder-named-x.png", folder_named_png, match="folder", xfail=NO_INPUTS_TWO_LINES)
    case("folder-named-x.png-inside-input-folder", folder_named_png_inside, "ok")
    case("only-folder-named-x.png-inside-input-folder", only_folder_named_png_inside, match="no image files",
         xfail=NO_INPUTS_TWO_LINES)
    case("symlink-to-folder.png", link_to_folder, match="folder", xfail=NO_INPUTS_TWO_LINES)
    case("symlink-to-good-image.png", good_symlink, "ok")
    case("unreadable-permissions-000.png", unreadable, "ok" if os.geteuid() == 0 else "fail")
    case("missing-file.png", missing, match="no such file")
    case("path-under-a-file", under_a_file)
    case("glob-matching-nothing", glob_nothing, match="no files match", xfail=NO_INPUTS_TWO_LINES)
    case("empty-folder", empty_folder, match="no image files", xfail=NO_INPUTS_TWO_LINES)
    case("name-with-spaces.png", named("with spaces.png", png_bytes(GOOD), "ok"), "ok")
    case("name-unicode.png", named("zellkern-\u00e4\u00f6\u00fc-\u6838.png", png_bytes(GOOD), "ok"), "ok")
    case("name-with-newline-junk.png", named("bad\nname.png", b"junk", "fail"), xfail=NEWLINE_NAME)
    case("name-with-newline-good.png", named("good\nname.png", png_bytes(GOOD), "ok"), "ok")
    case("name-only-suffix-.png", named(".png", png_bytes(GOOD), "ok"), "any")
    case("name-250-chars.png", named("n" * 246 + ".png", png_bytes(GOOD), "fail"), "fail", xfail=LONG_NAME_EMPTY_DIR)
    case("name-leading-dash.png", named("-a.png", png_bytes(GOOD), "ok"), "ok")
    case("output-is-a-file", out_is_file, match="not a folder")
    case("output-under-a-file", out_under_file)
    case("output-name-too-long", out_name_too_long, xfail=OUTPUT_NAME_TOO_LONG)
    case("output-in-proc", out_in_proc)
    return cases


def multi_input_cases() -> list[CliCase]:
    """Several inputs in one call: one error line per failed input, the good ones complete."""
    cases: list[CliCase] = []

    def mixed(root: Path, ctx: Ctx) -> Spec:
        good = [_write(root / "in" / f"good{i}.png", png_bytes(he_image(64, 64, i))) for i in range(2)]
        _write(root / "in" / "broken.png", b"broken")
        _write(root / "in" / "empty.tif", b"")
        _write(root / "in" / "trunc.jpg", truncate(jpeg_bytes(GOOD), 0.3))
        _write(root / "in" / "nan.tif", tiff_bytes(np.full((8, 8), np.nan, np.float32)))
        return Spec(_segment_argv([root / "in"], root / "out", ctx.model), root / "out", n_fail=4, ok_inputs=good,
                    fail_stems=["broken", "empty", "trunc", "nan"])

    def same_stem(root: Path, ctx: Ctx) -> Spec:
        a = _write(root / "in" / "a.png", png_bytes(GOOD))
        b = _write(root / "in" / "a.tif", tiff_bytes(GOOD, photometric="rgb"))
        return Spec(_segment_argv([a, b], root / "out", ctx.model), root / "out", n_fail=1, ok_inputs=[a])

    def twice(root: Path, ctx: Ctx) -> Spec:
        a = _write(root / "in" / "a.png", png_bytes(GOOD))
        return Spec(_segment_argv([a, a, root / "in"], root / "out", ctx.model), root / "out", n_fail=0,
                    ok_inputs=[a])

    def all_bad(root: Path, ctx: Ctx) -> Spec:
        for i in range(5):
            _write(root / "in" / f"bad{i}.png", os.urandom(100 + i))
        return Spec(_segment_argv([root / "in"], root / "out", ctx.model), root / "out", n_fail=5)

    cases.append(CliCase("images/mixed-folder-2-good-4-bad", "images", mixed, "fail"))
    cases.append(CliCase("images/same-stem-a.png-a.tif", "images", same_stem, "fail", "same output name"))
    cases.append(CliCase("images/same-file-three-times", "images", twice, "ok"))
    cases.append(CliCase("images/folder-of-5-random-files", "images", all_bad, "fail"))
    return cases


# ---------------------------------------------------------------------------------------------------- options
def option_cases() -> list[CliCase]:
    """Bad option values of segment and slide on a valid input."""
    cases: list[CliCase] = []
    seg_opts: list[tuple] = [
        ("mpp-0", ["--mpp", "0"], "fail", "--mpp"),
        ("mpp-negative", ["--mpp", "-1"], "fail", None),
        ("mpp-nan", ["--mpp", "nan"], "fail", "--mpp"),
        ("mpp-inf", ["--mpp", "inf"], "fail", None),
        ("mpp-1e-9", ["--mpp", "1e-9"], "fail", None, MPP_TINY),
        ("mpp-1e9", ["--mpp", "1e9"], "fail", "--mpp"),
        ("mpp-text", ["--mpp", "abc"], "fail", None),
        ("tile-0", ["--tile", "0"], "fail", "--tile"),
        ("tile-63", ["--tile", "63"], "fail", "minimum"),
        ("tile-negative", ["--tile", "-5"], "fail", None),
        ("tile-huge", ["--tile", "100000"], "any", None),
        ("halo-negative", ["--halo", "-1"], "fail", "--halo"),
        ("halo-99999", ["--halo", "99999"], "fail", None, SEG_HALO),
        ("chunk-1", ["--chunk", "1"], "fail", "minimum"),
        ("batch-size-0", ["--batch-size", "0"], "fail", None),
        ("batch-size-huge", ["--batch-size", "100000"], "ok", None),
        ("param-no-equals", ["--param", "x"], "fail", "KEY=VALUE"),
        ("param-unknown", ["--param", "bogus=1"], "fail", "bogus"),
        ("param-threshold-nan", ["--param", "foreground_threshold=nan"], "fail", "foreground_threshold"),
        ("param-threshold-2", ["--param", "foreground_threshold=2"], "any", None),  # >= 0 by design
        ("param-threshold-text", ["--param", "foreground_threshold=abc"], "fail", "foreground_threshold"),
        ("param-context-negative", ["--param", "context=-5"], "fail", "context"),
        ("param-min-size-1e99", ["--param", "min_size=1e99"], "any", None),
        ("param-cache-mb-negative", ["--param", "cache_mb=-1"], "any", None),
        ("amg-points-per-side-0", ["--mode", "amg", "--param", "points_per_side=0"], "fail", "points_per_side",
         AMG_PPS_0),
        ("amg-points-per-side-1e6", ["--mode", "amg", "--param", "points_per_side=1000000"], "fail", None),
        ("precision-bogus", ["--precision", "fp8"], "fail", None),
        ("device-bogus", ["--device", "toaster"], "fail", "device", DEVICE),
        ("device-cuda-7", ["--device", "cuda:7"], "fail", "cuda", DEVICE),
        ("mode-bogus", ["--mode", "magic"], "fail", None),
    ]
    for name, opts, expect, match, *xf in seg_opts:
        def make(root: Path, ctx: Ctx, opts=opts, expect=expect) -> Spec:
            p = _write(root / "in" / "a.png", png_bytes(GOOD))
            ok = expect == "ok"
            return Spec(_segment_argv([p], root / "out", ctx.model, *opts), root / "out",
                        ok_inputs=[p] if ok else [], fail_stems=[] if ok else ["a"])
        cases.append(CliCase(f"options/segment-{name}", "options", make, expect, match, xf[0] if xf else None))
    slide_opts: list[tuple] = [
        ("mpp-0", ["--mpp", "0"], "fail", "mpp"),
        ("mpp-nan", ["--mpp", "nan"], "fail", "mpp"),
        ("target-mpp-0", ["--target-mpp", "0"], "fail", "mpp"),
        ("target-mpp-inf", ["--target-mpp", "inf"], "fail", None, SLIDE_TARGET_MPP),
        ("target-mpp-nan", ["--target-mpp", "nan"], "fail", None, SLIDE_TARGET_MPP),
        ("target-mpp-1e-6", ["--target-mpp", "1e-6"], "fail", None, SLIDE_TARGET_MPP, "slow"),
        ("tile-1", ["--tile", "1"], "fail", "tile", SLIDE_LIMITS, "slow"),
        ("tile-63", ["--tile", "63"], "fail", "tile", SLIDE_LIMITS),
        ("chunk-1", ["--chunk", "1"], "fail", "chunk", SLIDE_LIMITS, "slow"),
        ("halo-equal-tile", ["--tile", "128", "--halo", "128"], "fail", "halo", SLIDE_LIMITS),
        ("context-1e9", ["--context", "1000000000"], "any", None),
        ("batch-size-0", ["--batch-size", "0"], "fail", None),
        ("roi-garbage", ["--roi", "garbage"], "fail", None),
        ("roi-zero-size", ["--roi", "0,0,0,0"], "fail", None),
        ("roi-outside", ["--roi", "100000,100000,10,10"], "fail", "outside"),
        ("roi-nan", ["--roi", "nan,nan,10,10"], "fail", None, ROI_NAN),
        ("roi-missing-file", ["--roi", "/nonexistent/roi.geojson"], "fail", None),
        ("roi-broken-geojson", ["--roi", "@ROI_BROKEN@"], "fail", None),
        ("roi-empty-featurecollection", ["--roi", "@ROI_EMPTY@"], "fail", None),
        ("scheduler-unreachable", ["--scheduler", "tcp://127.0.0.1:9"], "fail", "scheduler", None, "slow"),
    ]
    for name, opts, expect, match, *more in slide_opts:
        def make(root: Path, ctx: Ctx, opts=opts) -> Spec:
            slide = _small_slide(root / "in" / "s.tif")
            opts = list(opts)
            if "@ROI_BROKEN@" in opts:
                opts[opts.index("@ROI_BROKEN@")] = str(_write(root / "roi.geojson", '{"type": "FeatureCollection", '))
            if "@ROI_EMPTY@" in opts:
                opts[opts.index("@ROI_EMPTY@")] = str(_write(root / "roi.geojson",
                                                             '{"type": "FeatureCollection", "features": []}'))
            return Spec(_slide_argv([slide], root / "out", *opts), root / "out", fail_stems=["s"])
        cases.append(CliCase(f"options/slide-{name}", "options", make, expect, match, more[0] if more else None,
                             slow="slow" in more))
    return cases


# ---------------------------------------------------------------------------------------------------- slides
SLIDE_OPTS = ("--fake-model", "--target-mpp", "1.0", "--tile", "256", "--halo", "32", "--chunk", "512")


def _slide_argv(inputs: list[str | Path], out: Path, *extra: str) -> list[str]:
    return ["slide", *map(str, inputs), "-o", str(out), "--no-progress", *SLIDE_OPTS, *extra]


def _small_slide(path: Path, size: int = 1024, **kw) -> Path:
    from histosam.wsi.synthetic import write_synthetic_slide

    path.parent.mkdir(parents=True, exist_ok=True)
    kw.setdefault("mpp", 1.0)  # 1 mm wide: the tissue patches are large enough for the tissue detector
    kw.setdefault("levels", 2)
    return write_synthetic_slide(path, size, size, **kw)


def _slide_bytes(tmp: Path, size: int = 1024, **kw) -> bytes:
    p = _small_slide(tmp, size, **kw)
    data = p.read_bytes()
    p.unlink()
    return data


def slide_case(name: str, make_file: Callable[[Path], Path], expect: str = "fail", match: str | None = None,
               extra: tuple[str, ...] = (), xfail: str | None = None, slow: bool = False) -> CliCase:
    def make(root: Path, ctx: Ctx) -> Spec:
        path = make_file(root / "in")
        stem = path.name.split(".")[0]
        return Spec(_slide_argv([path], root / "out", *extra), root / "out",
                    ok_inputs=[path] if expect == "ok" else [], fail_stems=[stem] if expect == "fail" else [])

    return CliCase(f"slides/{name}", "slides", make, expect, match, xfail, slow)


def _file(name: str, data: bytes | Callable[[Path], bytes]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        content = data(folder) if callable(data) else data
        return _write(folder / name, content)
    return make


def _damaged_tile(folder: Path, n: int = 20, seed: int = 0, zero: bool = False) -> bytes:
    """A synthetic zlib slide with ``n`` bytes of one level-0 tissue tile inverted (or the tile zeroed)."""
    p = _small_slide(folder / "tmp-src.tif")
    ranges = tiff_segment_ranges(p)
    data = p.read_bytes()
    p.unlink()
    off, cnt = ranges[len(ranges) // 2 - 1]  # a tile inside the first tissue patch
    if zero:
        return data[:off] + b"\0" * cnt + data[off + cnt:]
    return flip_bytes(data, n, seed, off + 2, off + cnt)


def _header_damage(folder: Path, what: str) -> bytes:
    p = _small_slide(folder / "tmp-src.tif")
    data = bytearray(p.read_bytes())
    p.unlink()
    if what == "magic":
        data[:4] = b"\0\0\0\0"
    elif what == "ifd-offset":
        data[4:8] = struct.pack("<I", len(data) + 12345)
    elif what == "ifd-count":
        ifd = struct.unpack("<I", data[4:8])[0]
        data[ifd: ifd + 2] = struct.pack("<H", 0xFFFF)
    elif what == "big-endian-flag":
        data[:2] = b"MM"
    return bytes(data)


def _huge_declared(folder: Path, w: int, h: int, *, tile: tuple[int, int] | None = (256, 256),
                   zero_counts: bool = False, **kw) -> bytes:
    if tile is None:
        return craft_tiff(w, h, **kw)
    n = -(-w // tile[1]) * -(-h // tile[0])
    return craft_tiff(w, h, tile=tile, segment=zlib_tile(*tile), compression=8,
                      bytecounts=[0] * n if zero_counts else None, **kw)


def slide_cases() -> list[CliCase]:
    cases: list[CliCase] = []
    # valid slides
    cases += [
        slide_case("synthetic-pyramid-1024", lambda f: _small_slide(f / "ok.tif"), "ok"),
        slide_case("synthetic-no-mpp", lambda f: _small_slide(f / "nompp.tif", mpp=None), "ok"),
        slide_case("synthetic-no-pyramid", lambda f: _small_slide(f / "flat.tif", levels=1), "ok"),
        slide_case("synthetic-named.svs", lambda f: _small_slide(f / "named.svs"), "ok"),
        slide_case("synthetic-uncompressed", lambda f: _small_slide(f / "raw.tif", compression=None), "ok"),
        slide_case("synthetic-512-tiles-no-pyramid", lambda f: _small_slide(f / "t512.tif", tile=512, levels=1),
                   "ok"),
        slide_case("synthetic-mpp-absurd-72dpi", _file("dpi.tif", lambda f: _slide_bytes(f / "x.tif", mpp=352.8)),
                   "ok"),
        slide_case("tiny-tiff-1x1.svs", _file("one.svs", lambda f: craft_tiff(1, 1, segment=b"\x80\x40\xa0")),
                   "ok"),
        slide_case("tiny-tiff-8x8.svs", _file("eight.svs", lambda f: craft_tiff(8, 8, tile=None,
                                                                             segment=b"\x80" * 192)), "ok"),
        slide_case("tiff-1x5000", _file("line.tif", lambda f: craft_tiff(5000, 1, segment=b"\x80" * 15000)), "ok"),
        slide_case("grayscale-slide", _file("gray.tif", lambda f: tiff_bytes(he_image(512, 512)[..., 0],
                                                                             tile=(256, 256))), "ok"),
        slide_case("rgba-slide", _file("rgba.tif", lambda f: tiff_bytes(np.dstack(
            [he_image(512, 512), np.full((512, 512), 255, np.uint8)]), tile=(256, 256), photometric="rgb",
            extrasamples=[2])), "ok"),
        slide_case("uint16-slide", _file("u16.tif", lambda f: tiff_bytes(he_image(512, 512).astype(np.uint16) * 257,
                                                                        tile=(256, 256), photometric="rgb")), "ok"),
        slide_case("float32-slide", _file("f32.tif", lambda f: tiff_bytes(he_image(512, 512).astype(np.float32)
                                                                          / 255, tile=(256, 256), photometric="rgb")),
                   "any"),
        slide_case("float32-nan-slide", _file("fnan.tif", lambda f: tiff_bytes(
            np.full((512, 512, 3), np.nan, np.float32), tile=(256, 256), photometric="rgb")), "any"),
        slide_case("5-channel-slide", _file("c5.tif", lambda f: tiff_bytes(np.zeros((512, 512, 5), np.uint8),
                                                                          tile=(256, 256), photometric="minisblack",
                                                                          planarconfig="contig")), "any"),
        slide_case("stripped-small-slide", _file("strips.tif", lambda f: tiff_bytes(he_image(600, 700),
                                                                                   photometric="rgb",
                                                                                   rowsperstrip=16)), "ok"),
    ]
    # truncated slides
    for label, frac in (("header-only", 16), ("5pct", 0.05), ("50pct", 0.5), ("90pct", 0.9), ("minus1", -1)):
        cases.append(slide_case(f"truncated-{label}", _file("trunc.tif", lambda f, fr=frac: truncate(
            _slide_bytes(f / "x.tif"), fr)), "any" if label in ("90pct", "minus1") else "fail"))
    # broken headers and foreign content under slide names
    for what in ("magic", "ifd-offset", "ifd-count", "big-endian-flag"):
        cases.append(slide_case(f"header-{what}", _file("hdr.svs", lambda f, w=what: _header_damage(f, w)), "fail"))
    rng = np.random.default_rng(11)
    for suffix in (".svs", ".tif", ".ndpi", ".mrxs", ".scn", ".vms", ".bif", ".czi", ".dcm"):
        cases.append(slide_case(f"random-bytes{suffix}", _file(f"rnd{suffix}", rng.bytes(4096)), "fail"))
    cases += [
        slide_case("zero-size.svs", _file("zero.svs", b""), "fail"),
        slide_case("zero-size.tif", _file("zero.tif", b""), "fail"),
        slide_case("text.svs", _file("text.svs", b"Aperio Image Library v10\n"), "fail"),
        slide_case("png-named.svs", _file("png.svs", lambda f: png_bytes(he_image(256, 256))), "fail"),
        slide_case("jpeg-named.tif", _file("jpg.tif", lambda f: jpeg_bytes(he_image(256, 256))), "fail"),
        slide_case("tiff-no-ifd-entries", _file("noifd.tif", b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
                   "fail"),
    ]
    # damaged data
    for seed in range(3):
        cases.append(slide_case(f"tile-20-flipped-bytes-seed{seed}",
                                _file("dmg.tif", lambda f, s=seed: _damaged_tile(f, 20, s)), "any"))
    cases += [
        slide_case("tile-zeroed", _file("zeroed.tif", lambda f: _damaged_tile(f, zero=True)), "any"),
        slide_case("tile-offsets-beyond-eof", _file("eof.tif", lambda f: craft_tiff(
            1024, 1024, tile=(256, 256), offsets=[10**8] * 16, segment=zlib_tile(256, 256), compression=8)), "any"),
        slide_case("tile-bytecounts-zero", _file("sparse.tif", lambda f: _huge_declared(f, 1024, 1024,
                                                                                        zero_counts=True)), "any"),
        slide_case("unknown-compression", _file("cmp.tif", lambda f: craft_tiff(
            1024, 1024, tile=(256, 256), segment=b"\0" * 64, compression=12345)), "fail"),
    ]
    # huge declared dimensions, almost no data (the thumbnail must stay bounded)
    cases += [
        slide_case("declares-30000x30000-tiled-no-pyramid.svs",
                   _file("huge.svs", lambda f: _huge_declared(f, 30000, 30000)), "ok"),
        slide_case("declares-30000x30000-tiled-zero-bytecounts.svs",
                   _file("hugesparse.svs", lambda f: _huge_declared(f, 30000, 30000, zero_counts=True)), "any"),
        slide_case("declares-30000x30000-one-strip.svs",
                   _file("hugestrip.svs", lambda f: _huge_declared(f, 30000, 30000, tile=None)), "fail"),
        slide_case("declares-30000x30000-strips-of-16-rows.tif",
                   _file("hugestrips.tif", lambda f: craft_tiff(30000, 30000, rows_per_strip=16,
                                                                segment=zlib_tile(16, 30000), compression=8)),
                   "ok"),
        slide_case("declares-1000000x1000000.svs",
                   _file("giant.svs", lambda f: _huge_declared(f, 10**6, 10**6, tile=(4096, 4096))), "fail",
                   "too large"),
        slide_case("declares-60000x60000-mpp-0.1",
                   _file("huge01.tif", lambda f: _huge_declared(f, 60000, 60000, tile=(1024, 1024),
                                                                resolution=((100000, 1), 3))), "any"),
    ]
    # paths and lists
    def folder_named(root: Path) -> Path:
        (root / "x.svs").mkdir(parents=True)
        return root / "x.svs"

    def dangling(root: Path) -> Path:
        root.mkdir(parents=True)
        (root / "gone.svs").symlink_to(root / "nowhere.svs")
        return root / "gone.svs"

    cases += [
        slide_case("folder-named-x.svs", folder_named, "fail", "no slides"),
        slide_case("dangling-symlink.svs", dangling, "fail", "not found"),
        slide_case("missing.svs", lambda f: f / "missing.svs", "fail", "not found"),
    ]

    def csv_case(name: str, text: Callable[[Path], str], n_fail: int, expect: str = "fail",
                 match: str | None = None) -> None:
        def make(root: Path, ctx: Ctx) -> Spec:
            (root / "in").mkdir(parents=True)
            lst = _write(root / "in" / "list.csv", text(root / "in"))
            return Spec(_slide_argv([lst], root / "out"), root / "out", n_fail=n_fail)
        cases.append(CliCase(f"slides/{name}", "slides", make, expect, match))

    csv_case("csv-bad-mpp", lambda f: f"path,mpp\n{_small_slide(f / 'a.tif')},abc\n", 1, match="bad mpp")
    csv_case("csv-missing-slide", lambda f: "path\nnot-there.svs\n", 1, match="not found")
    csv_case("csv-empty", lambda f: "", 1, match="no slides")
    csv_case("csv-binary", lambda f: "\x00\x01\x02garbage", 1)
    csv_case("csv-mpp-negative", lambda f: f"{_small_slide(f / 'b.tif')},-1\n", 1, match="mpp")

    def empty_dir(root: Path, ctx: Ctx) -> Spec:
        (root / "in").mkdir(parents=True)
        return Spec(_slide_argv([root / "in"], root / "out"), root / "out")

    def glob_none(root: Path, ctx: Ctx) -> Spec:
        return Spec(_slide_argv([str(root / "*.svs")], root / "out"), root / "out")

    def mixed(root: Path, ctx: Ctx) -> Spec:
        good = _small_slide(root / "in" / "good.tif")
        _write(root / "in" / "bad.svs", b"garbage")
        _write(root / "in" / "trunc.tif", truncate(_slide_bytes(root / "x.tif"), 0.3))
        return Spec(_slide_argv([root / "in"], root / "out"), root / "out", n_fail=2, ok_inputs=[good],
                    fail_stems=["bad", "trunc"])

    cases += [
        CliCase("slides/empty-folder", "slides", empty_dir, "fail", "no slides"),
        CliCase("slides/glob-matching-nothing", "slides", glob_none, "fail", "no file matches"),
        CliCase("slides/folder-1-good-2-bad", "slides", mixed, "fail"),
    ]
    return cases


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_case(name: str, make_file: Callable[[Path, Ctx], Path], expect: str = "fail",
                    match: str | None = None, xfail: str | None = None, check=None) -> CliCase:
    def make(root: Path, ctx: Ctx) -> Spec:
        img = _write(root / "in" / "a.png", png_bytes(GOOD))
        model = make_file(root / "models", ctx)
        ok = expect == "ok"
        return Spec(_segment_argv([img], root / "out", model), root / "out", ok_inputs=[img] if ok else [],
                    fail_stems=[] if ok else ["a"], check=(lambda: check(ctx)) if check else None)

    return CliCase(f"checkpoints/{name}", "checkpoints", make, expect, match, xfail)


def _torch_file(name: str, obj_fn: Callable[[Ctx], Any], **save_kw) -> Callable[[Path, Ctx], Path]:
    def make(folder: Path, ctx: Ctx) -> Path:
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        torch.save(obj_fn(ctx), folder / name, **save_kw)
        return folder / name
    return make


def _bytes_file(name: str, data: bytes | Callable[[Ctx], bytes]) -> Callable[[Path, Ctx], Path]:
    def make(folder: Path, ctx: Ctx) -> Path:
        return _write(folder / name, data(ctx) if callable(data) else data)
    return make


class _Payload:
    """Unpickling this runs code (writes a marker file): it must never be unpickled by a load."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').write('ran')",))


def _marker_absent(ctx: Ctx) -> list[str]:
    return [f"a pickle payload ran: {ctx.pickle_marker} exists"] if ctx.pickle_marker.exists() else []


def _model_dict(ctx: Ctx) -> dict:
    import torch

    return torch.load(ctx.model, map_location="cpu", weights_only=True)


def _weights(d: dict) -> list[dict]:
    """The dicts of tensors of a histosam file (format 1: ``state_dict``; format 2: one per ``roles`` entry)."""
    if isinstance(d.get("state_dict"), dict):
        return [d["state_dict"]]
    return [v for v in (d.get("roles") or {}).values() if isinstance(v, dict)]


def _weights_key(d: dict) -> str:
    return "state_dict" if "state_dict" in d else "roles"


def _drop_first(d: dict) -> None:
    w = _weights(d)[0]
    w.pop(sorted(w)[0])


def _reshape_last(d: dict) -> None:
    import torch

    w = _weights(d)[-1]
    w[sorted(w)[-1]] = torch.zeros(7, 7)


def _fill_nan(d: dict) -> None:
    for w in _weights(d):
        for v in w.values():
            if v.is_floating_point():
                v.fill_(float("nan"))


def _model_state_edit(edit: Callable[[dict], None]) -> Callable[[Ctx], dict]:
    def fn(ctx: Ctx) -> dict:
        d = _model_dict(ctx)
        edit(d)
        return d
    return fn


def checkpoint_cases() -> list[CliCase]:
    import torch

    cases: list[CliCase] = []
    rng = np.random.default_rng(3)
    cases += [
        checkpoint_case("missing-file.pt", lambda f, c: f / "missing.pt", match="does not exist"),
        checkpoint_case("folder.pt", lambda f, c: (f / "dir.pt").mkdir(parents=True) or f / "dir.pt",
                        match="folder"),
        checkpoint_case("empty.pt", _bytes_file("empty.pt", b""), match="empty"),
        checkpoint_case("random-16-bytes.pt", _bytes_file("r16.pt", rng.bytes(16))),
        checkpoint_case("random-1k.pt", _bytes_file("r1k.pt", rng.bytes(1024))),
        checkpoint_case("random-1m.pt", _bytes_file("r1m.pt", rng.bytes(1 << 20))),
        checkpoint_case("random-1k-starting-0x80.pt", _bytes_file("r80.pt", b"\x80" + rng.bytes(1023))),
        checkpoint_case("random-1k-starting-PK.pt", _bytes_file("rpk.pt", b"PK\x03\x04" + rng.bytes(1020))),
        checkpoint_case("text.pt", _bytes_file("text.pt", b"version https://git-lfs.github.com/spec/v1\n")),
        checkpoint_case("html.pt", _bytes_file("html.pt", b"<html><body>Access denied</body></html>")),
        checkpoint_case("json.pt", _bytes_file("json.pt", b'{"model": "vit_b"}')),
        checkpoint_case("png.pt", _bytes_file("png.pt", lambda c: png_bytes(GOOD)), match="PNG"),
        checkpoint_case("gzip.pt", _bytes_file("gz.pt", lambda c: gzip.compress(c.model.read_bytes()[:1000]))),
        checkpoint_case("zip-with-junk-member.pt", _bytes_file("zip.pt", lambda c: _zip({"x/data.pkl": b"junk"}))),
        checkpoint_case("zip-empty.pt", _bytes_file("zip0.pt", lambda c: _zip({}))),
        checkpoint_case("safetensors-header.pt",
                        _bytes_file("st.pt", struct.pack("<Q", 20) + b'{"a": {}}' + b" " * 11)),
        checkpoint_case("unknown-registry-name", lambda f, c: Path("no-such-model"), match="no-such-model"),
    ]
    for frac in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, -1):
        label = "minus1" if frac == -1 else f"{int(frac * 100)}pct"
        cases.append(checkpoint_case(f"truncated-histosam-file-{label}.pt",
                                     _bytes_file(f"trunc-{label}.pt", lambda c, fr=frac: truncate(
                                         c.model.read_bytes(), fr))))
    cases += [
        checkpoint_case("torch-list.pt", _torch_file("list.pt", lambda c: [1, 2, 3])),
        checkpoint_case("torch-tensor.pt", _torch_file("tensor.pt", lambda c: torch.zeros(3))),
        checkpoint_case("torch-int.pt", _torch_file("int.pt", lambda c: 42)),
        checkpoint_case("torch-empty-dict.pt", _torch_file("emptyd.pt", lambda c: {})),
        checkpoint_case("histosam-version-99.pt", _torch_file("v99.pt", _model_state_edit(
            lambda d: d.update(version=99))), match="newer"),
        checkpoint_case("histosam-weights-a-string.pt", _torch_file("sds.pt", _model_state_edit(
            lambda d: d.update({_weights_key(d): "weights"})))),
        checkpoint_case("histosam-weights-empty.pt", _torch_file("sde.pt", _model_state_edit(
            lambda d: d.update({_weights_key(d): {}})))),
        checkpoint_case("histosam-checksum-garbage.pt", _torch_file("sum.pt", _model_state_edit(
            lambda d: d.update(weights_sha256="garbage")))),
        checkpoint_case("histosam-config-garbage.pt", _torch_file("cfg.pt", _model_state_edit(
            lambda d: d.update(config={"architecture": "no-such-arch"})))),
        checkpoint_case("histosam-config-not-a-dict.pt", _torch_file("cfg2.pt", _model_state_edit(
            lambda d: d.update(config=[1, 2])))),
        checkpoint_case("histosam-missing-keys.pt", _torch_file("miss.pt", _model_state_edit(_drop_first))),
        checkpoint_case("histosam-wrong-shape.pt", _torch_file("shape.pt", _model_state_edit(_reshape_last))),
        checkpoint_case("histosam-nan-weights.pt", _torch_file("nanw.pt", _model_state_edit(_fill_nan))),
        checkpoint_case("histosam-missing-keys-no-checksum.pt", _torch_file("miss2.pt", _model_state_edit(
            lambda d: (_drop_first(d), d.pop("weights_sha256", None))))),
        checkpoint_case("histosam-wrong-shape-no-checksum.pt", _torch_file("shape2.pt", _model_state_edit(
            lambda d: (_reshape_last(d), d.pop("weights_sha256", None))))),
        checkpoint_case("histosam-nan-weights-no-checksum.pt", _torch_file("nanw2.pt", _model_state_edit(
            lambda d: (_fill_nan(d), d.pop("weights_sha256", None)))), "any"),
        checkpoint_case("histosam-config-image-size-text.pt", _torch_file("cfg3.pt", _model_state_edit(
            lambda d: d["config"].update(image_size="big")))),
        checkpoint_case("histosam-config-mpp-negative.pt", _torch_file("cfg4.pt", _model_state_edit(
            lambda d: d["config"].update(mpp=-1.0))), "any"),
        checkpoint_case("micro-sam-model-state-junk.pt", _torch_file("ms.pt", lambda c: {
            "model_state": {"a": torch.zeros(1)}})),
        checkpoint_case("foreign-state-dict.pt", _torch_file("foreign.pt", lambda c: {
            "conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(10)}), match="not a SAM"),
        checkpoint_case("nested-dict.pt", _torch_file("nested.pt", lambda c: {"a": {"b": {"c": torch.zeros(1)}}})),
        checkpoint_case("pickle-payload-eval.pt", _torch_file("evil.pt", lambda c: {
            "format": "histosam", "x": _Payload(str(c.pickle_marker))}), check=_marker_absent),
        checkpoint_case("pickle-payload-raw.pt", _bytes_file("evil2.pkl", lambda c: pickle.dumps(
            _Payload(str(c.pickle_marker)))), check=_marker_absent),
        checkpoint_case("legacy-non-zip-serialisation.pt", _torch_file(
            "legacy.pt", lambda c: _model_dict(c), _use_new_zipfile_serialization=False), "ok"),
        checkpoint_case("other-architecture-tiny-no-decoder.pt", lambda f, c: c.tiny_model, match="decoder"),
        checkpoint_case("flat-sam-state-of-tiny.pt", _torch_file("flat.pt", lambda c: {
            k: v for w in _weights(torch.load(c.tiny_model, weights_only=True)) for k, v in w.items()})),
    ]
    for seed in range(8):
        cases.append(checkpoint_case(f"random-nano-20-flipped-bytes-seed{seed}.pt", _bytes_file(
            f"flip{seed}.pt", lambda c, s=seed: flip_bytes(c.model.read_bytes(), 20, s)), "fail"))
    for seed in range(4):
        cases.append(checkpoint_case(f"shipped-nano-copy-20-flipped-bytes-seed{seed}.pt", _bytes_file(
            "histosam-nano.pt", lambda c, s=seed: flip_bytes(SHIPPED_MODEL.read_bytes(), 20, s)), "fail"))
    cases.append(checkpoint_case("shipped-nano-copy-intact.pt", lambda f, c: (
        f.mkdir(parents=True, exist_ok=True), shutil.copy(SHIPPED_MODEL, f / "copy.pt"))[1], "ok"))
    return cases


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- configs
def _config_list() -> list[tuple[str, str]]:
    """The other engineer's malformed configs (tests/test_train_config_validation.py ``MALFORMED``)."""
    import importlib.util

    path = REPO / "tests" / "test_train_config_validation.py"
    spec = importlib.util.spec_from_file_location("_cfg_malformed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return list(mod.MALFORMED)


def config_cases() -> list[CliCase]:
    cases: list[CliCase] = []

    def cfg_case(name: str, text: bytes | str | Callable[[Path], bytes | str] | None, match: str | None,
                 extra: tuple[str, ...] = (), expect: str = "fail") -> None:
        def make(root: Path, ctx: Ctx) -> Spec:
            out = root / "train-out"
            given = text(root) if callable(text) else text
            path = root / "missing.yaml"
            if given is not None and not (root / "cfg" / "c.yaml").is_dir():
                path = _write(root / "cfg" / "c.yaml", given)
            elif given is not None:
                path = root / "cfg" / "c.yaml"
            flags = [] if isinstance(given, str) and "output_dir" in given else ["--output-dir", str(out)]
            return Spec(["train", str(path), "--no-progress", *flags, *extra], out)
        cases.append(CliCase(f"configs/{name}", "configs", make, expect, match))

    for text, key in _config_list():
        name = text.replace("\n", "; ")[:60]
        cfg_case(name, text + "\n", key)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
    cfg_case("missing-file", None, "missing.yaml")
    cfg_case("folder", lambda r: (r / "cfg" / "c.yaml").mkdir(parents=True) or "", None)
    cfg_case("binary-png", lambda r: png_bytes(GOOD), None)
    cfg_case("utf16", "epochs: 2\n".encode("utf-16"), None)
    cfg_case("nul-bytes", b"epochs: 2\x00\n", None)
    cfg_case("yaml-syntax-error", "epochs: [1, 2\nlr: 1e-5\n", None)
    cfg_case("yaml-tab-indent", "a:\n\t- b\n", None)
    cfg_case("top-level-list", "- epochs: 2\n", "mapping")
    cfg_case("top-level-scalar", "hello\n", "mapping")
    cfg_case("python-object-tag", "epochs: !!python/object/apply:os.system ['echo pwned']\n", None)
    cfg_case("billion-laughs-alias-bomb", bomb, None)
    cfg_case("deeply-nested", "a: " + "[" * 10000 + "]" * 10000 + "\n", None)
    cfg_case("empty-file-no-data-dirs", "", "data_dirs")
    cfg_case("only-comments", "# nothing\n", "data_dirs")
    cfg_case("data-dirs-missing", lambda r: f"data_dirs: [{r / 'nope'}]\n", "data_dirs")
    cfg_case("data-dirs-is-a-file", lambda r: f"data_dirs: [{_write(r / 'f.txt', 'x')}]\n", "data_dirs")
    cfg_case("flag-epochs-zero", "", "epochs", ("--epochs", "0"))
    cfg_case("flag-lr-text", "", None, ("--lr", "fast"))
    cfg_case("flag-unknown", "", None, ("--no-such-flag", "1"))
    cfg_case("checkpoint-random-bytes", lambda r: (f"data_dirs: [{_train_folder(r)}]\nmodel: nano\nepochs: 1\n"
                                                   f"checkpoint: {_write(r / 'ck.pt', os.urandom(256))}\n"),
             "ck.pt")
    cfg_case("data-dir-without-images", lambda r: f"data_dirs: [{(r / 'd').mkdir() or r / 'd'}]\nmodel: nano\n",
             None)
    cfg_case("data-dir-broken-images", lambda r: f"data_dirs: [{_broken_train_folder(r)}]\nmodel: nano\n", None)
    return cases


def _train_folder(root: Path) -> Path:
    import tifffile

    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    lab = np.zeros((64, 64), np.uint16)
    lab[10:20, 10:20] = 1
    _write(d / "im0.png", png_bytes(he_image(64, 64)))
    tifffile.imwrite(d / "im0_label.tif", lab)
    return d


def _broken_train_folder(root: Path) -> Path:
    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    _write(d / "im0.png", b"not a png")
    _write(d / "im0_label.tif", b"not a tiff")
    _write(d / "im1.png", png_bytes(he_image(64, 64)))
    _write(d / "im1_label.tif", truncate(tiff_bytes(np.ones((64, 64), np.uint16)), 0.5))
    return d


# ---------------------------------------------------------------------------------------------------- http
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def http_cases() -> list[HttpCase]:
    img = _b64(png_bytes(he_image(40, 60)))
    ok_body = {"type": "vit_b", "b64img": img, "bbox": [5, 7, 25, 19]}
    cases: list[HttpCase] = [
        HttpCase("http/predict-valid-bbox", "POST", "/sam/", ok_body, expect="ok"),
        HttpCase("http/predict-valid-points", "POST", "/sam/", {"type": "vit_b", "b64img": img,
                                                                "point_coords": [[3, 4], [30, 20]],
                                                                "point_labels": [0, 1]}, expect="ok"),
        HttpCase("http/automask-valid", "POST", "/sam/automask/", {"type": "vit_b", "b64img": img}, expect="ok"),
        HttpCase("http/version", "GET", "/sam/version/", expect="ok"),
        HttpCase("http/health", "GET", "/sam/health/", expect="ok"),
    ]
    raw = {
        "empty-body": b"",
        "not-json": b"this is not json",
        "truncated-json": json.dumps(ok_body).encode()[:50],
        "json-array": b"[1, 2, 3]",
        "json-string": b'"hello"',
        "json-null": b"null",
        "json-number": b"42",
        "nan-literal-bbox": json.dumps({**ok_body, "bbox": [5, 7, 25, 19]}).replace("19]", "NaN]").encode(),
        "infinity-literal-point": json.dumps({"type": "vit_b", "b64img": img, "point_coords": [[1, 1]],
                                              "point_labels": [1]}).replace("[[1, 1]]", "[[Infinity, 1]]").encode(),
        "deeply-nested-array": b'{"b64img": "x", "bbox": ' + b"[" * 50000 + b"]" * 50000 + b"}",
        "utf16-body": json.dumps(ok_body).encode("utf-16"),
        "latin1-garbage": b'{"b64img": "\xff\xfe\xfd"}',
        "duplicate-keys": b'{"b64img": "a", "b64img": "b", "bbox": [1, 1, 2, 2]}',
    }
    for name, body in raw.items():
        cases.append(HttpCase(f"http/predict-{name}", "POST", "/sam/", body,
                              headers={"content-type": "application/json"},
                              expect="ok" if name == "utf16-body" else "fail"))  # JSON may be UTF-16 (RFC 8259)
    bodies: dict[str, Any] = {
        "missing-b64img": {"type": "vit_b", "bbox": [1, 1, 5, 5]},
        "b64img-null": {**ok_body, "b64img": None},
        "b64img-number": {**ok_body, "b64img": 12345},
        "b64img-empty": {**ok_body, "b64img": ""},
        "b64img-not-base64": {**ok_body, "b64img": "!!!not base64!!!"},
        "b64img-text": {**ok_body, "b64img": _b64(b"hello world")},
        "b64img-truncated-png": {**ok_body, "b64img": _b64(truncate(png_bytes(he_image(40, 60)), 0.5))},
        "b64img-huge-declared-png": {**ok_body, "b64img": _b64(png_with_header(100000, 100000))},
        "b64img-huge-declared-jpeg": {**ok_body, "b64img": _b64(jpeg_with_size(GOOD, 60000, 60000))},
        "b64img-zero-size": {**ok_body, "b64img": _b64(b"")},
        "b64img-1x1": {**ok_body, "b64img": _b64(png_bytes(np.zeros((1, 1, 3), np.uint8))), "bbox": [0, 0, 1, 1]},
        "b64img-5-channel-tiff": {**ok_body, "b64img": _b64(tiff_bytes(np.zeros((40, 60, 5), np.uint8),
                                                                      photometric="minisblack",
                                                                      planarconfig="contig"))},
        "b64img-float-nan-tiff": {**ok_body, "b64img": _b64(tiff_bytes(np.full((40, 60), np.nan, np.float32)))},
        "b64img-random-bytes": {**ok_body, "b64img": _b64(np.random.default_rng(1).bytes(500))},
        "bbox-3-numbers": {**ok_body, "bbox": [1, 2, 3]},
        "bbox-strings": {**ok_body, "bbox": ["a", "b", "c", "d"]},
        "bbox-inverted": {**ok_body, "bbox": [25, 19, 5, 7]},
        "bbox-outside": {**ok_body, "bbox": [1000, 1000, 2000, 2000]},
        "bbox-1e308": {**ok_body, "bbox": [0, 0, 1e308, 1e308]},
        "points-ragged": {"type": "vit_b", "b64img": img, "point_coords": [[1, 2, 3], [4]], "point_labels": [1, 1]},
        "points-labels-mismatch": {"type": "vit_b", "b64img": img, "point_coords": [[1, 2]], "point_labels": [1, 0]},
        "points-label-2": {"type": "vit_b", "b64img": img, "point_coords": [[1, 2]], "point_labels": [2]},
        "points-outside": {"type": "vit_b", "b64img": img, "point_coords": [[-5, 2]], "point_labels": [1]},
        "points-only-background": {"type": "vit_b", "b64img": img, "point_coords": [[5, 2]], "point_labels": [0]},
        "points-100000": {"type": "vit_b", "b64img": img, "point_coords": [[1, 1]] * 100000,
                          "point_labels": [1] * 100000},
        "no-prompt": {"type": "vit_b", "b64img": img},
        "type-unknown": {**ok_body, "type": "vit_zz"},
        "type-number": {**ok_body, "type": 7},
        "multimask-string": {**ok_body, "multimask_output": "perhaps"},
        "b64mask-given": {**ok_body, "b64mask": img},
        "checkpoint-url-unknown": {**ok_body, "checkpoint_url": "https://example.org/unknown.pth"},
        "checkpoint-url-file-scheme": {**ok_body, "checkpoint_url": "file:///etc/passwd"},
        "checkpoint-url-10k-chars": {**ok_body, "checkpoint_url": "x" * 10000},
    }
    # a 1x1 viewport is an image; a box across the edge is clipped; an earlier mask of the viewport's size is a
    # correction prompt (samapi's b64mask)
    valid = {"b64img-1x1", "bbox-1e308", "b64mask-given"}
    for name, body in bodies.items():
        cases.append(HttpCase(f"http/predict-{name}", "POST", "/sam/", body, expect="ok" if name in valid else "fail",
                              xfail=SERVER_NAN_TIFF if name == "b64img-float-nan-tiff" else None))
    auto = {
        "points-per-side-0": {"type": "vit_b", "b64img": img, "points_per_side": 0},
        "points-per-side-1e9": {"type": "vit_b", "b64img": img, "points_per_side": 10**9},
        "pred-iou-nan": '{"type": "vit_b", "b64img": "' + img + '", "pred_iou_thresh": NaN}',
        "crop-n-layers-99": {"type": "vit_b", "b64img": img, "crop_n_layers": 99},
        "crop-overlap-1": {"type": "vit_b", "b64img": img, "crop_overlap_ratio": 1.0},
        "min-mask-area-negative": {"type": "vit_b", "b64img": img, "min_mask_region_area": -1},
        "missing-image": {"type": "vit_b"},
        "image-huge-declared": {"type": "vit_b", "b64img": _b64(png_with_header(50000, 50000))},
    }
    for name, body in auto.items():
        cases.append(HttpCase(f"http/automask-{name}", "POST", "/sam/automask/", body,
                              headers={"content-type": "application/json"} if isinstance(body, str) else {}))
    weights = {
        "empty": {},
        "missing-url": {"type": "vit_b", "name": "x"},
        "type-unknown": {"type": "vit_zz", "name": "x", "url": "https://example.org/a.pth"},
        "name-empty": {"type": "vit_b", "name": "", "url": "https://example.org/a.pth"},
        "name-300-chars": {"type": "vit_b", "name": "n" * 300, "url": "https://example.org/a.pth"},
        "url-file-scheme": {"type": "vit_b", "name": "f", "url": "file:///etc/passwd"},
        "url-ftp": {"type": "vit_b", "name": "f", "url": "ftp://127.0.0.1/a.pth"},
        "url-metadata-ip": {"type": "vit_b", "name": "m", "url": "http://169.254.169.254/latest/meta-data"},
        "url-localhost": {"type": "vit_b", "name": "l", "url": "http://127.0.0.1:9/a.pth"},
        "path-missing": {"type": "vit_b", "name": "p", "url": "/nonexistent/weights.pth"},
        "path-traversal-name": {"type": "vit_b", "name": "../../etc/passwd", "url": "/nonexistent/w.pth"},
    }
    for name, body in weights.items():
        cases.append(HttpCase(f"http/weights-{name}", "POST", "/sam/weights/", body))
    cases += [
        HttpCase("http/weights-list-type-unknown", "GET", "/sam/weights/?type=vit_zz"),
        HttpCase("http/unknown-path", "GET", "/sam/nothing-here/"),
        HttpCase("http/wrong-method-get-predict", "GET", "/sam/"),
        HttpCase("http/sam3-unsupported", "POST", "/sam/sam3/", {}, status=501),
        HttpCase("http/video-unsupported", "POST", "/sam/video/", {}, status=501),
        HttpCase("http/predict-body-over-limit", "POST", "/sam/", {**ok_body, "pad": "x" * (2 << 20)}),
    ]
    return cases


# ---------------------------------------------------------------------------------------------------- all
def cli_cases() -> list[CliCase]:
    cases = image_cases() + option_cases() + slide_cases() + checkpoint_cases() + config_cases()
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids: {sorted(dup)}"
    return cases
