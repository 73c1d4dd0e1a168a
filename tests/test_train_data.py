"""Training data: folder listing, split, patch sampling, augmentation alignment, determinism."""

import pathlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from histosam.train.data import (
    DataError,
    PatchDataset,
    colour_jitter,
    list_samples,
    random_crop,
    random_flip_rotate,
    read_sample,
    sample_patch,
    split_samples,
)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def blobs(h=96, w=96, n=12, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.uint32)
    for i in range(1, n + 1):
        r, c = rng.integers(6, h - 6), rng.integers(6, w - 6)
        rr, cc = np.ogrid[:h, :w]
        lab[(rr - r) ** 2 + (cc - c) ** 2 <= rng.integers(9, 25)] = i
    return lab


def write_folder(d: pathlib.Path, ids):
    d.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(ids):
        lab = blobs(seed=k)
        img = np.stack([(lab > 0) * 200] * 3, -1).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i}.png")
        tifffile.imwrite(d / f"{i}_label.tif", lab.astype(np.uint16))


def test_list_split(tmp_path):
    write_folder(tmp_path / "a", ["x1", "x2", "x3"])
    write_folder(tmp_path / "b", ["y1"])
    (tmp_path / "b" / "lonely.png").write_bytes(b"")  # no label: ignored
    s = list_samples([tmp_path / "a", tmp_path / "b"])
    assert [x.id for x in s] == ["x1", "x2", "x3", "y1"]
    tr, va = split_samples(s, ["x2"])
    assert [x.id for x in va] == ["x2"] and [x.id for x in tr] == ["x1", "x3", "y1"]
    tr1, va1 = split_samples(s, [], 0.5, seed=3)
    tr2, va2 = split_samples(s, [], 0.5, seed=3)
    assert [x.id for x in va1] == [x.id for x in va2] and len(va1) == 2 and len(tr1) == 2
    with pytest.raises(DataError, match="zz"):
        split_samples(s, ["zz"])
    write_folder(tmp_path / "c", ["x1"])
    with pytest.raises(DataError, match="unique"):
        list_samples([tmp_path / "a", tmp_path / "c"])
    with pytest.raises(DataError):
        list_samples([tmp_path / "missing"])
    img, lab = read_sample(s[0])
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and lab.dtype == np.uint32


def test_flip_rotate_keeps_alignment_exactly():
    lab = blobs()
    img = np.stack([lab * 10, lab * 3, 255 - lab], -1).astype(np.uint8)
    for seed in range(8):
        i2, l2 = random_flip_rotate(img, lab, np.random.default_rng(seed))
        np.testing.assert_array_equal(i2[..., 0], (l2 * 10).astype(np.uint8))
        np.testing.assert_array_equal(i2[..., 2], (255 - l2).astype(np.uint8))


def test_crop_with_scale_keeps_alignment():
    lab = blobs(128, 128, 20)
    img = np.stack([(lab > 0) * 200] * 3, -1).astype(np.uint8)
    for seed in range(6):
        i2, l2 = random_crop(img, lab, 64, np.random.default_rng(seed), (0.8, 1.25))
        assert i2.shape == (64, 64, 3) and l2.shape == (64, 64)
        agree = ((i2[..., 0] > 100) == (l2 > 0)).mean()
        assert agree > 0.97
    # scale 1: exact crop
    i3, l3 = random_crop(img, lab, 64, np.random.default_rng(0))
    np.testing.assert_array_equal(i3[..., 0] > 100, l3 > 0)


def test_sample_patch_relabels_and_requires_instances():
    lab = blobs(128, 128, 20)
    img = np.stack([(lab > 0) * 200] * 3, -1).astype(np.uint8)
    i2, l2 = sample_patch(img, lab, np.random.default_rng(1), 64, min_instances=3, hed=0.0,
                          brightness=0.0, contrast=0.0)
    ids = np.unique(l2)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))  # consecutive after cropping
    assert len(ids) - 1 >= 3
    assert ((i2[..., 0] > 100) == (l2 > 0)).mean() > 0.97
    sizes = np.bincount(l2.ravel())[1:]
    assert sizes.min() >= 10


def test_colour_jitter_changes_colour_not_structure():
    lab = blobs()
    img = np.stack([np.where(lab > 0, 120, 230), np.where(lab > 0, 60, 200), np.where(lab > 0, 160, 220)],
                   -1).astype(np.uint8)
    out = colour_jitter(img, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)
    assert out[lab > 0, 0].mean() < out[lab == 0, 0].mean()  # nuclei stay darker
    np.testing.assert_array_equal(colour_jitter(img, np.random.default_rng(0), 0, 0, 0), img)


def test_dataset_deterministic_and_targets():
    labs = [blobs(seed=s) for s in range(3)]
    imgs = [np.stack([(x > 0) * 200] * 3, -1).astype(np.uint8) for x in labs]
    ds = PatchDataset(imgs, labs, 64, length=5, seed=7, min_instances=2)
    a = [ds[i] for i in range(5)]
    b = [ds[i] for i in reversed(range(5))][::-1]
    for (x1, y1, t1), (x2, y2, t2) in zip(a, b):
        assert np.array_equal(y1.numpy(), y2.numpy())
        assert x1.shape == (3, 64, 64) and y1.shape == (64, 64) and t1.shape == (3, 64, 64)
        assert np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(t1.numpy(), t2.numpy())
        np.testing.assert_array_equal(t1[0].numpy(), (y1.numpy() > 0).astype(np.float32))
    ds.set_epoch(1)
    assert not np.array_equal(ds[0][0].numpy(), a[0][0].numpy())
    val = PatchDataset(imgs, labs, 64, length=5, random=False)
    assert len(val) == 3
    np.testing.assert_array_equal(val[0][0][0].numpy(), imgs[0][16:80, 16:80, 0])


@pytest.mark.data
def test_real_monuseg_patch():
    d = SHARED / "monuseg" / "train"
    if not d.is_dir():
        pytest.skip("shared data absent")
    s = list_samples([d])
    img, lab = read_sample(s[0])
    i2, l2 = sample_patch(img, lab, np.random.default_rng(0), 256)
    assert i2.shape == (256, 256, 3) and l2.max() >= 4
