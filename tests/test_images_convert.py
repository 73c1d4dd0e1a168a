"""``to_rgb_uint8`` / ``read_image``: exact conversions on small hand-made arrays and files."""

from __future__ import annotations

import numpy as np
import pytest

from histosam.errors import ImageError
from histosam.io.images import read_image, to_rgb_uint8


def _rgb_equal(out: np.ndarray, expected_gray_or_rgb) -> None:
    exp = np.asarray(expected_gray_or_rgb, dtype=np.uint8)
    if exp.ndim == 2:
        exp = np.repeat(exp[..., None], 3, axis=-1)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, exp)


def test_uint8_rgb_unchanged():
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = to_rgb_uint8(a)
    np.testing.assert_array_equal(out, a)


def test_grayscale_and_single_channel():
    g = np.array([[0, 7], [128, 255]], dtype=np.uint8)
    _rgb_equal(to_rgb_uint8(g), g)
    _rgb_equal(to_rgb_uint8(g[..., None]), g)
    assert to_rgb_uint8(g).shape == (2, 2, 3)


def test_rgba_over_white():
    a = np.zeros((1, 4, 4), dtype=np.uint8)
    a[0, :, 0] = [200, 200, 200, 10]   # red channel
    a[0, :, 3] = [255, 0, 128, 255]    # opaque, transparent, half, opaque
    out = to_rgb_uint8(a)
    # red: 200 opaque; white behind a transparent pixel; 200*128/255 + 255*127/255 = 227.4; 10 opaque
    np.testing.assert_array_equal(out[0, :, 0], [200, 255, 227, 10])
    # green/blue are 0: 0 opaque, 255 transparent, 255*127/255 = 127, 0 opaque
    np.testing.assert_array_equal(out[0, :, 1], [0, 255, 127, 0])
    np.testing.assert_array_equal(out[0, :, 2], [0, 255, 127, 0])


def test_uint16_scaled_linearly():
    a = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    # v * 255 / 65535 rounded: 0, 1, 3.89 -> 4, 128, 255
    _rgb_equal(to_rgb_uint8(a), [[0, 1, 4, 128, 255]])


def test_other_integers_clipped():
    a = np.array([[-5, 0, 100, 255, 300]], dtype=np.int32)
    _rgb_equal(to_rgb_uint8(a), [[0, 0, 100, 255, 255]])


def test_float_unit_range():
    a = np.array([[0.0, 0.5, 1.0, -0.2]], dtype=np.float32)
    _rgb_equal(to_rgb_uint8(a), [[0, 128, 255, 0]])  # 127.5 + 0.5 -> 128


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("stretch", [None, "channel", "global"])
def test_float_non_finite_is_refused(bad, stretch):
    # a band of +inf used to make the whole image black (scaled as 0-255 after nan_to_num) and give 0 nuclei
    a = np.full((8, 8, 3), 0.5, np.float32)
    a[2:4] = bad
    with pytest.raises(ImageError, match=r"48 non-finite value\(s\)"):
        to_rgb_uint8(a, stretch=stretch)


def test_float_0_255_range():
    a = np.array([[0.0, 1.4, 254.6, 300.0, -3.0]], dtype=np.float64)
    _rgb_equal(to_rgb_uint8(a), [[0, 1, 255, 255, 0]])


def test_bool():
    a = np.array([[True, False]])
    _rgb_equal(to_rgb_uint8(a), [[255, 0]])


def test_channels_first():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(np.moveaxis(hwc, -1, 0)), hwc)
    gray = rng.integers(0, 256, size=(1, 5, 6), dtype=np.uint8)
    _rgb_equal(to_rgb_uint8(gray), gray[0])


def test_stretch_channel_and_global():
    a = np.zeros((1, 3, 3), dtype=np.uint16)
    a[0, :, 0] = [100, 200, 300]
    a[0, :, 1] = [0, 1000, 2000]
    a[0, :, 2] = [50, 50, 50]  # constant channel
    ch = to_rgb_uint8(a, stretch="channel")
    np.testing.assert_array_equal(ch[0, :, 0], [0, 128, 255])
    np.testing.assert_array_equal(ch[0, :, 1], [0, 128, 255])
    np.testing.assert_array_equal(ch[0, :, 2], [0, 0, 0])
    gl = to_rgb_uint8(a, stretch="global")  # one range 0..2000 for all channels
    np.testing.assert_array_equal(gl[0, :, 0], [13, 26, 38])  # 100*255/2000 = 12.75 -> 13, 25.5 -> 26, 38.25
    np.testing.assert_array_equal(gl[0, :, 1], [0, 128, 255])
    np.testing.assert_array_equal(gl[0, :, 2], [6, 6, 6])  # 6.375 -> 6
    with pytest.raises(ValueError, match="stretch"):
        to_rgb_uint8(a, stretch="percentile")


def test_stretch_uint8_changes_values():
    a = np.array([[10, 20]], dtype=np.uint8)
    _rgb_equal(to_rgb_uint8(a, stretch="global"), [[0, 255]])
    _rgb_equal(to_rgb_uint8(a), [[10, 20]])


@pytest.mark.parametrize("shape", [(0, 5), (5, 0, 3), (0,), (3, 0)])
def test_empty(shape):
    with pytest.raises(ImageError, match="empty"):
        to_rgb_uint8(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (4,), (5, 4, 6), (2, 5, 6)])
def test_bad_dimensions(shape):
    with pytest.raises(ImageError, match="expected an H×W"):
        to_rgb_uint8(np.zeros(shape, dtype=np.uint8))


def test_unsupported_dtype():
    with pytest.raises(ImageError, match="dtype"):
        to_rgb_uint8(np.array([["a", "b"]]))


# ---------------------------------------------------------------------------------------------- files

def _pattern() -> np.ndarray:
    a = np.zeros((8, 10, 3), dtype=np.uint8)
    a[..., 0] = np.arange(10, dtype=np.uint8) * 25
    a[..., 1] = (np.arange(8, dtype=np.uint8) * 30)[:, None]
    a[..., 2] = 77
    return a


def test_read_png(tmp_path):
    from PIL import Image

    a = _pattern()
    Image.fromarray(a).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), a)
    rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[1:], a[1:])


def test_read_png_16bit_gray_and_palette(tmp_path):
    from PIL import Image

    Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.uint16)).save(tmp_path / "g16.png")
    _rgb_equal(read_image(tmp_path / "g16.png"), [[0, 4, 255]])
    pal = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png"), [[[10, 20, 30], [200, 100, 50]]])


def test_read_tiff(tmp_path):
    import tifffile

    a = _pattern()
    tifffile.imwrite(tmp_path / "a.tif", a)
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), a)
    tifffile.imwrite(tmp_path / "u16.tiff", np.array([[0, 257, 65535]], dtype=np.uint16))
    _rgb_equal(read_image(tmp_path / "u16.tiff"), [[0, 1, 255]])
    tifffile.imwrite(tmp_path / "chw.tif", np.moveaxis(a, -1, 0), photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "chw.tif"), a)


def test_read_jpeg(tmp_path):
    from PIL import Image

    a = np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - a).max() <= 4  # lossy, but a flat colour survives closely


@pytest.mark.parametrize("name,content", [("notes.png", b"this is not an image\n"), ("x.tif", b"\x00" * 64),
                                          ("x.jpg", b"")])
def test_non_image_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=name):
        read_image(tmp_path / name)


def test_missing_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def test_read_4d_tiff_is_image_error(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 3, 4, 5, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="stack.tif"):
        read_image(tmp_path / "stack.tif")


def test_pixel_size_stated_by_the_file(tmp_path):
    """µm/px from resolution tags (cm and inch), OME-XML and Aperio descriptions; print resolutions, PNGs and
    untagged TIFFs state none."""
    import tifffile
    from PIL import Image

    from histosam.io.images import image_mpp, tiff_mpp

    img = np.zeros((8, 8, 3), np.uint8)
    cases = {
        "cm.tif": dict(resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER"),  # 0.5 µm/px
        "inch.tif": dict(resolution=(25400 / 0.25, 25400 / 0.25), resolutionunit="INCH"),  # 0.25 µm/px
        "ome.ome.tif": dict(ome=True, metadata={"axes": "YXS", "PhysicalSizeX": 0.2425, "PhysicalSizeXUnit": "µm"}),
        "aperio.tif": dict(description="Aperio Image Library v12 |AppMag = 20|MPP = 0.4990"),
        "print.tif": dict(resolution=(72, 72), resolutionunit="INCH"),  # 352.8 µm/px: a print resolution
        "untagged.tif": {},
    }
    for name, kw in cases.items():
        tifffile.imwrite(tmp_path / name, img, **kw)
    Image.fromarray(img).save(tmp_path / "plain.png")
    assert image_mpp(tmp_path / "cm.tif") == pytest.approx(0.5)
    assert image_mpp(tmp_path / "inch.tif") == pytest.approx(0.25)
    assert image_mpp(tmp_path / "ome.ome.tif") == pytest.approx(0.2425)
    assert image_mpp(tmp_path / "aperio.tif") == pytest.approx(0.499)
    assert tiff_mpp(tmp_path / "print.tif") == pytest.approx(25400 / 72)
    assert image_mpp(tmp_path / "print.tif") is None
    assert image_mpp(tmp_path / "untagged.tif") is None
    assert image_mpp(tmp_path / "plain.png") is None
