"""Slides whose header promises far more than the file holds: the thumbnail is bounded (wsi/reader.py), and damaged
or undecodable pixels are one-line SlideErrors."""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest
from crafting import craft_tiff, flip_bytes, tiff_bytes, tiff_segment_ranges, zlib_tile
from harness import run_main, temp_files

from histosam.errors import SlideError
from histosam.wsi import reader as reader_mod
from histosam.wsi.reader import SampledThumbnailWarning, open_slide
from histosam.wsi.synthetic import write_synthetic_slide
from histosam.wsi.tissue import detect_tissue, iou

FAKE = ["--fake-model", "--target-mpp", "1.0", "--tile", "256", "--halo", "32", "--chunk", "512", "--no-progress"]


def _declared(path, w, h, tile=(256, 256), **kw):
    n = -(-w // tile[1]) * -(-h // tile[0])
    path.write_bytes(craft_tiff(w, h, tile=tile, segment=zlib_tile(*tile), compression=8, **kw))
    assert path.stat().st_size < 16 * n + 4096  # almost no data: one tile shared by every offset
    return path


def test_declared_30000_squared_no_pyramid_ends_fast_with_a_result(tmp_path):
    """The known hang: tags declare 30000 x 30000 px (a 112 KB file), no pyramid; the thumbnail read level 0
    whole (900 Mpx). Now: a result within 10 s, the thumbnail sampled from a bounded number of tiles."""
    slide = _declared(tmp_path / "huge.svs", 30000, 30000)
    t0 = time.perf_counter()
    res = run_main(["slide", str(slide), "-o", str(tmp_path / "out"), *FAKE], tmp_path)
    took = time.perf_counter() - t0
    assert res.rc == 0 and "Traceback" not in res.stderr, res.stderr
    assert took < 10, f"{took:.1f} s"
    assert (tmp_path / "out" / "huge.provenance.json").is_file() and not temp_files(tmp_path)


def test_sampled_thumbnail_reads_a_bounded_number_of_pixels(tmp_path, monkeypatch):
    slide = _declared(tmp_path / "huge.tif", 30000, 30000)
    read = []
    real = reader_mod.SlideReader.read_region

    def counting(self, x, y, w, h, level=0):
        read.append(w * h)
        return real(self, x, y, w, h, level)

    monkeypatch.setattr(reader_mod.SlideReader, "read_region", counting)
    with open_slide(slide, mpp=0.25) as s:
        read.clear()
        with pytest.warns(SampledThumbnailWarning, match="sampled from"):
            thumb = s.thumbnail(8.0)
    assert thumb.shape == (938, 938, 3)
    assert sum(read) <= reader_mod.THUMB_SAMPLE_BUDGET
    assert len(read) >= reader_mod.MIN_THUMB_CELLS


def test_declared_one_million_squared_is_refused(tmp_path):
    slide = _declared(tmp_path / "giant.svs", 10**6, 10**6, tile=(4096, 4096))
    t0 = time.perf_counter()
    res = run_main(["slide", str(slide), "-o", str(tmp_path / "out"), *FAKE], tmp_path)
    assert res.rc == 1 and time.perf_counter() - t0 < 10
    errs = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(errs) == 1 and "too large for any glass slide" in errs[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_one_huge_strip_is_refused_not_decoded(tmp_path):
    """A 30000 x 30000 RGB TIFF stored as one uncompressed strip (a sparse 2.7 GB file): any read decodes the whole
    strip, so even a sampled thumbnail is unbounded: a one-line error within 10 s."""
    import tifffile

    path = tmp_path / "strip.svs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(path, shape=(30000, 30000, 3), dtype=np.uint8, photometric="rgb")
    if os.stat(path).st_blocks * 512 > 64 * 2**20:
        pytest.skip("this file system does not store sparse files")
    t0 = time.perf_counter()
    res = run_main(["slide", str(path), "-o", str(tmp_path / "out"), *FAKE], tmp_path)
    assert time.perf_counter() - t0 < 10
    errs = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert res.rc == 1 and len(errs) == 1 and "pyramid" in errs[0], res.stderr


def test_exact_thumbnail_when_a_pyramid_level_is_close(tmp_path):
    """Slides with a suitable level keep the exact (area-averaged) thumbnail: no warning, equal to read_at_mpp."""
    slide = write_synthetic_slide(tmp_path / "p.tif", 2048, 2048, mpp=0.5, levels=3)
    with open_slide(slide) as s, warnings.catch_warnings():
        warnings.simplefilter("error", SampledThumbnailWarning)
        t = s.thumbnail(8.0)
        np.testing.assert_array_equal(t, s.read_at_mpp(0, 0, t.shape[1], t.shape[0], 8.0))


def test_sampled_tissue_mask_is_close_to_the_exact_one(tmp_path, monkeypatch):
    """Forced onto the sampled path, the tissue mask of a synthetic slide stays close to the exact one."""
    slide = write_synthetic_slide(tmp_path / "flat.tif", 4096, 4096, mpp=0.5, levels=1)
    with open_slide(slide) as s:
        exact = detect_tissue(s)
        monkeypatch.setattr(reader_mod, "THUMB_READ_BUDGET", 1)
        monkeypatch.setattr(reader_mod, "THUMB_SAMPLE_BUDGET", 2**22)  # 64 of the 256 tiles of 256 x 256 px
        with pytest.warns(SampledThumbnailWarning, match="64 of 256"):
            sampled = detect_tissue(s)
    assert exact.mask.any() and iou(exact.mask, sampled.mask) > 0.75  # 0.81 measured


def test_damaged_tile_is_one_line_slide_error(tmp_path):
    src = write_synthetic_slide(tmp_path / "src.tif", 1024, 1024, mpp=1.0, levels=2)
    off, cnt = tiff_segment_ranges(src)[7]
    bad = tmp_path / "bad.tif"
    bad.write_bytes(flip_bytes(src.read_bytes(), 20, 0, off + 2, off + cnt))
    with open_slide(bad) as s:
        with pytest.raises(SlideError, match="cannot read level 0") as exc:
            s.read_region(0, 0, 1024, 1024, 0)
    assert "\n" not in str(exc.value)


def test_float_slide_opens_with_a_backend_that_decodes_it(tmp_path):
    """OpenSlide opens a 32-bit float TIFF but cannot decode it: the probe read hands it to the next backend."""
    path = tmp_path / "f32.tif"
    path.write_bytes(tiff_bytes(np.full((512, 512, 3), 0.5, np.float32), tile=(256, 256), photometric="rgb"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = open_slide(path)
    with s:
        assert s.backend != "openslide"
        assert s.read_region(0, 0, 8, 8).shape == (8, 8, 3)
