"""Byte-level crafting of malformed files for the reliability corpus (everything generated in code, small).

- :func:`craft_tiff`: a minimal little-endian TIFF written by hand, so that the tags can declare anything
  (30000 x 30000 px, tile offsets past the end, zero byte counts, an IFD that points at itself) while the file
  holds almost no data;
- :func:`png_with_header`: a PNG whose IHDR declares any size, CRCs correct;
- :func:`jpeg_with_size`: a real JPEG whose SOF marker is patched to declare another size;
- encoders (:func:`png_bytes`, :func:`jpeg_bytes`, :func:`tiff_bytes`, ...) and byte damage helpers.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np

from testlib import he_image  # noqa: F401 - the corpus's valid images (shared with tests/)

# TIFF field types: (code, byte size, struct char)
_TYPES = {"BYTE": (1, 1, "B"), "ASCII": (2, 1, "B"), "SHORT": (3, 2, "H"), "LONG": (4, 4, "I"),
          "RATIONAL": (5, 8, "II")}


def png_bytes(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", **kw) if mode else Image.fromarray(arr).save(
        buf, format="PNG", **kw)
    return buf.getvalue()


def pil_bytes(arr_or_image, fmt: str, **kw) -> bytes:
    from PIL import Image

    im = arr_or_image if isinstance(arr_or_image, Image.Image) else Image.fromarray(arr_or_image)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    return pil_bytes(arr, "JPEG", quality=90, **kw)


def tiff_bytes(arr: np.ndarray, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def truncate(data: bytes, frac: float | int) -> bytes:
    """The first ``frac`` of ``data`` (a float in (0, 1)) or the first ``n`` bytes (an int; negative: drop)."""
    if isinstance(frac, int):
        return data[:frac]
    return data[: max(1, int(len(data) * frac))]


def flip_bytes(data: bytes, n: int, seed: int, start: int = 0, stop: int | None = None) -> bytes:
    """``data`` with ``n`` distinct bytes in ``[start, stop)`` inverted (xor 0xFF), chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    stop = len(data) if stop is None else stop
    idx = rng.choice(np.arange(start, stop), size=min(n, stop - start), replace=False)
    b = bytearray(data)
    for i in idx:
        b[int(i)] ^= 0xFF
    return bytes(b)


def png_with_header(width: int, height: int, color_type: int = 2, depth: int = 8, idat: bytes | None = None
                    ) -> bytes:
    """A PNG whose IHDR declares ``width x height`` (valid CRCs) with a tiny IDAT (almost no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(idat or b"\0" * 64))
            + chunk(b"IEND", b""))


def jpeg_with_size(arr: np.ndarray, width: int, height: int) -> bytes:
    """A real JPEG of ``arr`` whose SOF marker declares ``width x height`` (the scan data stays small)."""
    data = bytearray(jpeg_bytes(arr))
    i = 2
    while i < len(data) - 9:
        if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        seg = struct.unpack(">H", data[i + 2: i + 4])[0]
        i += 2 + seg
    raise AssertionError("no SOF marker")


def bmp_with_size(width: int, height: int) -> bytes:
    """A BMP header declaring ``width x height`` at 24 bpp followed by a few bytes of pixels."""
    row = (width * 3 + 3) // 4 * 4
    size = row * height
    header = b"BM" + struct.pack("<IHHI", 54 + size, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, size, 2835, 2835, 0, 0)
    return header + info + b"\x80" * 64


def craft_tiff(width: int, height: int, *, spp: int = 3, bits: int = 8, tile: tuple[int, int] | None = None,
               rows_per_strip: int | None = None, segment: bytes | None = None, segments: list[bytes] | None = None,
               compression: int = 1, bytecounts: list[int] | None = None, offsets: list[int] | None = None,
               photometric: int | None = None, sample_format: int | None = None, description: str | None = None,
               resolution: tuple[tuple[int, int], int] | None = None, loop_ifd: bool = False,
               next_ifd_beyond_eof: bool = False) -> bytes:
    """A hand-written single-IFD TIFF.

    The declared geometry is ``width x height`` (``spp`` samples of ``bits`` bits) in tiles ``(th, tw)`` or
    strips of ``rows_per_strip`` rows (default: one strip). The segment data: ``segments`` (one per segment),
    or ``segment`` stored once and pointed at by every segment (a huge declared image in a tiny file), or none
    (offsets point at a few zero bytes). ``bytecounts``/``offsets`` override what the tags say. ``loop_ifd``:
    the next-IFD pointer points back at the IFD; ``next_ifd_beyond_eof``: it points past the end.
    """
    if tile is not None:
        th, tw = tile
        n = max(1, -(-height // max(th, 1)) * -(-width // max(tw, 1)))
    else:
        rps = rows_per_strip or height
        n = max(1, -(-height // max(rps, 1)))
    entries: list[tuple[int, str, list]] = [
        (256, "LONG", [width]), (257, "LONG", [height]), (258, "SHORT", [bits] * spp),
        (259, "SHORT", [compression]),
        (262, "SHORT", [photometric if photometric is not None else (2 if spp >= 3 else 1)]),
    ]
    if description is not None:
        entries.append((270, "ASCII", list(description.encode("latin-1") + b"\0")))
    entries.append((277, "SHORT", [spp]))
    if resolution is not None:
        (num, den), unit = resolution
        entries += [(282, "RATIONAL", [(num, den)]), (283, "RATIONAL", [(num, den)]), (296, "SHORT", [unit])]
    entries.append((284, "SHORT", [1]))
    if sample_format is not None:
        entries.append((339, "SHORT", [sample_format] * spp))
    if spp == 4 or spp > 4:
        entries.append((338, "SHORT", [2] + [0] * (spp - 4) if spp == 4 else [0] * (spp - 3)))
    off_tag, cnt_tag = (324, 325) if tile is not None else (273, 279)
    if tile is not None:
        entries += [(322, "LONG", [tile[1]]), (323, "LONG", [tile[0]])]
    else:
        entries.append((278, "LONG", [rows_per_strip or height]))
    # placeholders; filled below once the layout is known
    entries += [(off_tag, "LONG", [0] * n), (cnt_tag, "LONG", [0] * n)]
    entries.sort(key=lambda e: e[0])

    def packed(kind: str, values: list) -> bytes:
        code, size, ch = _TYPES[kind]
        if kind == "RATIONAL":
            return b"".join(struct.pack("<II", *v) for v in values)
        return struct.pack("<" + ch * len(values), *values)

    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    # out-of-line values, then the data
    blobs: dict[int, int] = {}
    pos = ifd_offset + ifd_size
    for i, (_, kind, values) in enumerate(entries):
        nbytes = len(packed(kind, values))
        if nbytes > 4:
            blobs[i] = pos
            pos += nbytes + (nbytes & 1)
    data_start = pos
    if segments is not None:
        seg_offsets, pos2 = [], data_start
        for s in segments:
            seg_offsets.append(pos2)
            pos2 += len(s)
        data = b"".join(segments)
        counts = [len(s) for s in segments]
    else:
        data = segment if segment is not None else b"\0" * 16
        seg_offsets, counts = [data_start] * n, [len(data)] * n
    seg_offsets = offsets if offsets is not None else seg_offsets
    counts = bytecounts if bytecounts is not None else counts
    for i, (tag, kind, _) in enumerate(entries):
        if tag == off_tag:
            entries[i] = (tag, kind, list(seg_offsets))
        elif tag == cnt_tag:
            entries[i] = (tag, kind, list(counts))
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset))
    out += struct.pack("<H", len(entries))
    for i, (tag, kind, values) in enumerate(entries):
        code = _TYPES[kind][0]
        body = packed(kind, values)
        count = len(values)
        if i in blobs:
            out += struct.pack("<HHII", tag, code, count, blobs[i])
        else:
            out += struct.pack("<HHI", tag, code, count) + body.ljust(4, b"\0")
    next_ifd = ifd_offset if loop_ifd else (10**9 if next_ifd_beyond_eof else 0)
    out += struct.pack("<I", next_ifd)
    for i, (_, kind, values) in enumerate(entries):
        if i in blobs:
            body = packed(kind, values)
            assert len(out) == blobs[i], (len(out), blobs[i])
            out += body + (b"\0" if len(body) & 1 else b"")
    assert len(out) == data_start
    out += data
    return bytes(out)


def zlib_tile(th: int, tw: int, spp: int = 3, value: int = 0) -> bytes:
    """One zlib-compressed (TIFF compression 8) tile of constant ``value``."""
    return zlib.compress(bytes([value]) * (th * tw * spp))


def tiff_segment_ranges(data_path) -> list[tuple[int, int]]:
    """``[(offset, bytecount), ...]`` of the first page's tiles or strips."""
    import tifffile

    with tifffile.TiffFile(data_path) as tif:
        page = tif.pages[0]
        return list(zip(page.dataoffsets, page.databytecounts))
