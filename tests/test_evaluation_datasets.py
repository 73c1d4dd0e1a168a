"""Dataset readers on small hand-made files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histosam.errors import HistosamError
from histosam.evaluation import datasets as D

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write_sample(folder: Path, sid: str, with_class: bool = False) -> np.ndarray:
    img = np.zeros((6, 8, 3), np.uint8)
    img[..., 0] = 200
    Image.fromarray(img).save(folder / f"{sid}.png")
    lab = np.zeros((6, 8), np.uint16)
    lab[1:3, 1:4] = 1
    lab[4:6, 5:8] = 2
    tifffile.imwrite(folder / f"{sid}_label.tif", lab)
    if with_class:
        tifffile.imwrite(folder / f"{sid}_class.tif", (lab > 0).astype(np.uint8) * 3)
    return lab


def test_folder_layout_round_trip(tmp_path):
    lab = _write_sample(tmp_path, "b", with_class=True)
    _write_sample(tmp_path, "a")
    samples = D.list_samples(tmp_path)
    assert [s.id for s in samples] == ["a", "b"]
    assert samples[0].classes is None and samples[1].classes is not None
    image, labels, classes = D.load_sample(samples[1])
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8 and image[0, 0, 0] == 200
    assert labels.dtype == np.uint32 and np.array_equal(labels, lab)
    assert classes.dtype == np.uint8 and classes.max() == 3


def test_folder_errors(tmp_path):
    with pytest.raises(HistosamError, match="not found"):
        D.list_samples(tmp_path / "nope")
    (tmp_path / "train").mkdir()
    _write_sample(tmp_path / "train", "x")
    with pytest.raises(HistosamError, match="train"):
        D.list_samples(tmp_path)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train" / "y.png")
    with pytest.raises(HistosamError, match="without"):
        D.list_samples(tmp_path / "train")
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_sample(bad, "z")
    tifffile.imwrite(bad / "z_label.tif", np.zeros((3, 3), np.uint16))
    with pytest.raises(HistosamError, match="shape"):
        D.load_sample(D.list_samples(bad)[0])


def test_split_ids_deterministic_and_order_free():
    ids = [f"img{i}" for i in range(10)]
    tr, va = D.split_ids(ids, 0.2, seed=3)
    assert len(va) == 2 and len(tr) == 8 and set(tr) | set(va) == set(ids) and not set(tr) & set(va)
    assert D.split_ids(list(reversed(ids)), 0.2, seed=3) == (tr, va)
    assert D.split_ids(ids, 0.2, seed=4) != (tr, va) or D.split_ids(ids, 0.2, seed=5) != (tr, va)
    assert D.split_ids(["a", "b", "c"], 0.01, seed=0)[1].__len__() == 1
    assert D.split_ids(["a", "b"], 1.0, seed=0) == ([], ["a", "b"])
    with pytest.raises(HistosamError):
        D.split_ids(ids, 1.5)


def test_monuseg_xml(tmp_path):
    xml = """<?xml version="1.0"?>
<Annotations MicronsPerPixel="0.252700"><Annotation><Regions>
<Region Id="1"><Vertices><Vertex X="1" Y="1"/><Vertex X="4" Y="1"/><Vertex X="4" Y="2"/>
<Vertex X="1" Y="2"/></Vertices></Region>
<Region Id="2"><Vertices><Vertex X="0" Y="0"/><Vertex X="1" Y="0"/></Vertices></Region>
<Region Id="3"><Vertices><Vertex X="3" Y="1"/><Vertex X="6" Y="1"/><Vertex X="6" Y="5"/>
<Vertex X="3" Y="5"/></Vertices></Region>
</Regions></Annotation></Annotations>"""
    p = tmp_path / "a.xml"
    p.write_text(xml)
    lab = D.read_monuseg_xml(p, (8, 10))
    assert lab.dtype == np.uint32
    expect = np.zeros((8, 10), np.uint32)
    expect[1:3, 1:5] = 1  # X = columns 1..4, Y = rows 1..2 (polygon vertices included)
    expect[1:6, 3:7] = 2  # later region overwrites; the 2-vertex region is dropped
    assert np.array_equal(lab, expect)
    (tmp_path / "bad.xml").write_text("<Annotations><Region>")
    with pytest.raises(HistosamError):
        D.read_monuseg_xml(tmp_path / "bad.xml", (4, 4))


def test_consep_mat(tmp_path):
    from scipy.io import savemat

    inst = np.zeros((5, 5), np.int32)
    inst[0:2, 0:2] = 3
    inst[3:5, 3:5] = 9
    types = np.zeros((5, 5), np.int32)
    types[inst == 3] = 4
    types[inst == 9] = 7
    savemat(tmp_path / "x.mat", {"inst_map": inst.astype(float), "type_map": types, "inst_type": [[4], [7]]})
    i, t = D.read_consep_mat(tmp_path / "x.mat")
    assert i.dtype == np.uint32 and np.array_equal(i, inst)
    assert t.dtype == np.uint8 and t[0, 0] == 3 and t[4, 4] == 4 and t[2, 2] == 0
    _, t7 = D.read_consep_mat(tmp_path / "x.mat", merge_classes=False)
    assert t7[0, 0] == 4 and t7[4, 4] == 7
    savemat(tmp_path / "y.mat", {"inst_map": inst})
    with pytest.raises(HistosamError, match="type_map"):
        D.read_consep_mat(tmp_path / "y.mat")


def test_pannuke(tmp_path):
    masks = np.zeros((2, 4, 4, 6), np.float64)
    masks[0, 0:2, 0:2, 0] = 17  # neoplastic
    masks[0, 2:4, 2:4, 1] = 17  # inflammatory, same id in another channel
    masks[0, 0, 3, 4] = 5  # epithelial
    masks[0, ..., 5] = (masks[0, ..., :5].sum(-1) == 0)
    masks[1, ..., 5] = 1  # empty image
    images = np.full((2, 4, 4, 3), 120.0)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    im, lab, cls = D.read_pannuke(tmp_path / "images.npy", tmp_path / "masks.npy")
    assert im.dtype == np.uint8 and im.shape == (2, 4, 4, 3)
    assert lab.dtype == np.uint32 and cls.dtype == np.uint8
    assert lab[0, 0, 0] == 1 and lab[0, 3, 3] == 2 and lab[0, 0, 3] == 3
    assert cls[0, 0, 0] == 1 and cls[0, 3, 3] == 2 and cls[0, 0, 3] == 5
    assert lab[1].max() == 0 and cls[1].max() == 0
    with pytest.raises(HistosamError):
        D.pannuke_to_labels(np.zeros((4, 4, 5)))


@pytest.mark.data
def test_real_monuseg_folder_loads():
    folder = SHARED / "monuseg" / "train"
    if not folder.is_dir():
        pytest.skip("shared data not available")
    samples = D.list_samples(folder)
    assert len(samples) == 30
    image, labels, _ = D.load_sample(samples[0])
    assert image.shape == (1000, 1000, 3) and labels.max() > 100
