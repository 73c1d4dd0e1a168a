"""Atomic writes, label files, QuPath GeoJSON, tables, provenance."""

import gzip
import json
import os
import stat

import numpy as np
import pytest
from shapely.geometry import Polygon, shape

from histosam.errors import HistosamError
from histosam.io.atomic import atomic_dir, atomic_path, atomic_write
from histosam.io.geojson import GeoJSONWriter, feature, read_geojson, write_geojson
from histosam.io.labels import ZarrLabelWriter, read_labels, write_labels_tiff, write_labels_zarr
from histosam.io.provenance import build_provenance, read_provenance, sha256_file, write_provenance
from histosam.io.tables import read_table, write_table


def test_atomic_write_keeps_old_file_on_exception(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_write(p) as f:
            f.write("new half")
            raise ZeroDivisionError
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.txt"]
    with atomic_write(p, "wb") as f:
        f.write(b"new")
    assert p.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.tif") as tmp:
            tmp.write_bytes(b"abc")
            raise RuntimeError
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d.zarr") as d:
            (d / "a").write_text("x")
            raise RuntimeError
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    """New outputs get 0o666/0o777 less the umask (not the temporary's private 0o600/0o700: group members on
    shared storage must read them); a replaced file keeps its old permissions."""
    old_mask = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "a.json") as f:
            f.write("{}")
        with atomic_path(tmp_path / "b.tif") as tmp:
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "c.zarr") as d:
            (d / "zarr.json").write_text("{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
        assert stat.S_IMODE((tmp_path / "b.tif").stat().st_mode) == 0o640
        assert stat.S_IMODE((tmp_path / "c.zarr").stat().st_mode) == 0o750
        (tmp_path / "a.json").chmod(0o604)
        with atomic_write(tmp_path / "a.json") as f:
            f.write("[]")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o604
    finally:
        os.umask(old_mask)


def test_labels_tiff_and_zarr_roundtrip(tmp_path):
    lab = np.random.default_rng(0).integers(0, 100_000, (70, 90)).astype(np.uint32)
    write_labels_tiff(tmp_path / "l.tif", lab, mpp=0.25)
    got = read_labels(tmp_path / "l.tif")
    assert got.dtype == np.uint32 and np.array_equal(got, lab)
    write_labels_zarr(tmp_path / "l.zarr", lab, chunks=32)
    assert np.array_equal(read_labels(tmp_path / "l.zarr"), lab)
    with ZarrLabelWriter(tmp_path / "s.zarr", (70, 90), chunks=32) as w:
        w.write(5, 6, np.array([[1, 0], [2, 2]], np.uint32))
        w.write(5, 7, np.array([[3, 0]], np.uint32))  # zeros do not erase earlier objects
        assert not (tmp_path / "s.zarr").exists()  # appears only when finished
    got = read_labels(tmp_path / "s.zarr")
    assert got[5:7, 6:8].tolist() == [[1, 3], [2, 2]] and got.sum() == 8
    with pytest.raises(HistosamError):
        write_labels_tiff(tmp_path / "bad.tif", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(HistosamError):
        read_labels(tmp_path / "missing.tif")


@pytest.mark.parametrize("name", ["n.geojson", "n.geojson.gz"])
def test_geojson_streaming_structure(tmp_path, name):
    p = tmp_path / name
    square = Polygon([(0, 0), (4, 0), (4, 3), (0, 3)])
    with GeoJSONWriter(p) as w:
        w.add([feature(square, 1, {"area_px": 12, "bad": float("nan")})])
        w.add(feature(square, i, {"area_px": 12}) for i in (2, 3))
        assert not p.exists()
    raw = gzip.decompress(p.read_bytes()) if name.endswith(".gz") else p.read_bytes()
    data = json.loads(raw)
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 3
    f = data["features"][0]
    assert f["properties"] == {
        "objectType": "detection",
        "classification": {"name": "Nucleus", "color": [0, 160, 255]},
        "measurements": {"area_px": 12.0},
    }
    assert shape(f["geometry"]).equals(square)
    ids = [g["id"] for g in data["features"]]
    assert len(set(ids)) == 3 and all(len(i) == 36 for i in ids)
    assert read_geojson(p) == data["features"]


def test_geojson_old_file_kept_on_error(tmp_path):
    p = tmp_path / "n.geojson"
    write_geojson(p, [])
    before = p.read_bytes()
    assert json.loads(before) == {"type": "FeatureCollection", "features": []}
    with pytest.raises(KeyError):
        with GeoJSONWriter(p) as w:
            w.add([feature(Polygon([(0, 0), (1, 0), (1, 1)]), 1)])
            raise KeyError
    assert p.read_bytes() == before and len(list(tmp_path.iterdir())) == 1
    (tmp_path / "bare.json").write_text(json.dumps([{"type": "Feature", "geometry": None, "properties": {}}]))
    assert len(read_geojson(tmp_path / "bare.json")) == 1
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(HistosamError):
        read_geojson(tmp_path / "bad.json")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_tables_roundtrip(tmp_path, suffix):
    t = {"id": [1, 2], "area_px": [12, 30], "centroid_x": [3.5, 7.25]}
    write_table(tmp_path / f"t{suffix}", t)
    got = read_table(tmp_path / f"t{suffix}")
    assert got.to_dict("list") == t


def test_table_unknown_suffix(tmp_path):
    with pytest.raises(HistosamError, match="csv"):
        write_table(tmp_path / "t.xlsx", {"a": [1]})


def test_provenance(tmp_path):
    m = tmp_path / "model.pt"
    m.write_bytes(b"abc")
    digest = sha256_file(m)
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    rec = build_provenance(
        model_name="vit_b_histopathology", model_sha256=digest, parameters={"min_size": 10}, input_path=m
    )
    write_provenance(tmp_path / "p.json", rec)
    got = read_provenance(tmp_path / "p.json")
    assert got["model"]["sha256"] == digest and got["parameters"] == {"min_size": 10}
    assert got["input"].endswith("model.pt") and "T" in got["started"] and got["histosam_version"]


def test_feature_geometry_json_equals_shapely_mapping():
    """Polygon/MultiPolygon coordinates written from arrays give the JSON of shapely's own mapping."""
    import shapely
    from shapely.geometry import MultiPolygon, Point, mapping

    holed = Polygon([(0, 0), (3.14159, 0), (3, 2.71828)], [[(1, 0.5), (2, 0.5), (2, 1)]])
    for geom in (holed, MultiPolygon([holed, Polygon([(10, 10), (11, 10), (11, 11)])]), Polygon(),
                 MultiPolygon(), Point(1.234, 2.345)):
        ref = mapping(shapely.transform(geom, lambda xy: np.round(xy, 2)))
        ours = feature(geom, 1)["geometry"]
        assert json.dumps(ours) == json.dumps({"type": ref["type"], "coordinates": ref["coordinates"]})
