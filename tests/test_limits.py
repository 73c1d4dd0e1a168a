"""Limits: options and files that would run for minutes or exhaust memory end at once with one line (and leave
nothing behind); temp files of interrupted runs are swept."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histosam.errors import ImageError
from histosam.io.atomic import sweep_temp_files
from histosam.io.images import read_image
from histosam.limits import LimitError, check_memory, check_tiling, check_upsample

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "histosam" / "data" / "cmu1_small_region_crop.png"


def huge_header_tiff(path: Path, side: int = 30000) -> Path:
    """A 256² tiled TIFF whose ImageWidth/ImageLength tags are rewritten to ``side`` (a few KB on disk)."""
    tifffile.imwrite(path, np.zeros((256, 256, 3), np.uint8), tile=(256, 256), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        offsets = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
    with open(path, "r+b") as f:
        for off, dtype in offsets:
            f.seek(off)
            f.write(struct.pack("<H" if int(dtype) == 3 else "<I", side))
    return path


def test_check_tiling_and_upsample():
    check_tiling(64, 0, 64)
    check_tiling(None, None, None)
    for kwargs in ({"tile": 7}, {"chunk": 8}, {"halo": -1}, {"tile": 128, "halo": 128}):
        args = {"tile": None, "halo": None, "chunk": None, **kwargs}
        with pytest.raises(LimitError):
            check_tiling(**args)
    check_upsample(8.0, 2.0, 0.25)
    with pytest.raises(LimitError, match="200×"):
        check_upsample(200.0, 50.0, 0.25)


def test_memory_check_names_size_and_hint():
    with pytest.raises(LimitError, match=r"needs about \d+\.\d GiB.*use the hint"):
        check_memory(2**50, "a job", "use the hint")
    check_memory(1024, "a job", "-")


def test_pixel_cap_is_checked_before_decoding(tmp_path, monkeypatch):
    path = huge_header_tiff(tmp_path / "huge.tif")
    assert path.stat().st_size < 10_000
    t = time.perf_counter()
    with pytest.raises(ImageError, match=r"declares 900 Mpx"):
        read_image(path)
    assert time.perf_counter() - t < 2
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(small)
    monkeypatch.setenv("HISTOSAM_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageError, match="more than the"):
        read_image(small)
    monkeypatch.setenv("HISTOSAM_MAX_IMAGE_PIXELS", "2000")
    assert read_image(small).shape == (40, 50, 3)


@pytest.mark.parametrize("case", ["tile7", "mpp50", "huge_tiff"])
def test_cli_refuses_within_seconds_with_one_line(case, tmp_path):
    """The issue's three cases, run as a user runs them: each ends within 10 s, one error line, no traceback,
    no output folder."""
    image = str(EXAMPLE)
    extra: list[str] = []
    if case == "tile7":
        extra = ["--tile", "7"]
    elif case == "mpp50":
        extra = ["--mpp", "50"]
    else:
        image = str(huge_header_tiff(tmp_path / "huge.tif"))
    out = tmp_path / "out"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "histosam", "segment", image, "-o", str(out), "--no-progress",
                           *extra], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {"tile7": "below the minimum", "mpp50": "upsample", "huge_tiff": "declares 900 Mpx"}[case] in errors[0]
    assert not out.exists()
    assert elapsed < 10, elapsed


def test_sweep_removes_only_our_temp_files(tmp_path):
    ours = [tmp_path / ".a.geojson.k3j_x9q2.tmp", tmp_path / ".a_nuclei.parquet.abcdefgh.tmp.parquet",
            tmp_path / ".a_labels.ome.zarr.zzzzzzzz.old"]
    kept = [tmp_path / ".b.geojson.k3j_x9q2.tmp",  # another input's
            tmp_path / ".a.geojson.tmp",  # not our pattern
            tmp_path / "a.geojson", tmp_path / ".ab.geojson.k3j_x9q2.tmp"]  # 'ab' is another stem
    for p in ours[:2] + kept:
        p.write_text("x")
    ours[2].mkdir()
    (ours[2] / "0").write_text("chunk")
    removed = sweep_temp_files(tmp_path, "a")
    assert sorted(removed) == sorted(ours)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in ours)
