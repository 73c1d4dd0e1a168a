"""histosam.pipeline.segment_file: output consistency, tiling invariance, mpp resampling, resume, atomicity.

A model-free map predictor (dark purple = nucleus, foreground probability varying with the blue channel) makes
these tests fast and makes the maps of every pixel depend only on pixels within 6 px, so any tiling with a
halo >= 6 must give exactly the same instances.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image
from shapely.geometry import Point, Polygon, shape

import histosam
from histosam.io.geojson import feature, read_geojson
from histosam.io.labels import read_labels
from histosam.pipeline import is_complete, segment_file
from histosam.pipeline import outputs as outputs_mod
from histosam.wsi.fake import colour_threshold_maps


def he_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Pink H&E-like background with purple nuclei (radius 4-9 px), some overlapping into clumps."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.int16)
    img[:] = (230, 170, 205)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(max(4, h * w // 700)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 9)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (rng.integers(60, 110), rng.integers(30, 60),
                                                        rng.integers(110, 160))
    img += rng.integers(-8, 9, size=img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def fake_maps(tiles: np.ndarray) -> np.ndarray:
    """colour_threshold_maps with foreground probability 0.5 + 0.5·blue/255 inside nuclei (varied scores)."""
    maps = colour_threshold_maps(tiles)
    maps[:, 0] *= 0.5 + 0.5 * np.asarray(tiles)[..., 2].astype(np.float32) / 255.0
    return maps


class FakeModel:
    """Stands in for a loaded model: resolution, post-processing defaults and frame size only."""

    image_size = 256
    checkpoint_path = None
    config = SimpleNamespace(name="fake", architecture="fake", instance_decoder="fake", mpp=0.25, postprocess={},
                             resize_longest_side=False)


def same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.fixture
def image_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    img = he_image(260, 330, seed=1)
    path = tmp_path / "slide_a.png"
    Image.fromarray(img).save(path)
    return path, img


@pytest.fixture
def patched_predictor(monkeypatch):
    """histosam.segment / segment_file with a model object use ``fake_maps`` instead of the network."""
    import histosam.inference.maps as maps_mod

    monkeypatch.setattr(maps_mod, "make_map_predictor", lambda *a, **k: fake_maps)


def run(path, out, **kw):
    kw.setdefault("progress", False)
    return segment_file(path, out, FakeModel(), predict_maps=fake_maps, **kw)


def test_outputs_consistent(image_file, tmp_path):
    path, img = image_file
    h, w = img.shape[:2]
    names = run(path, tmp_path / "out", tile=128, halo=32, chunk=128, mpp=0.25)
    assert {k: p.name for k, p in names.items()} == {
        "labels": "slide_a_labels.tif", "geojson": "slide_a.geojson", "csv": "slide_a_nuclei.csv",
        "parquet": "slide_a_nuclei.parquet", "provenance": "slide_a_provenance.json"}
    labels = read_labels(names["labels"])
    assert labels.dtype == np.uint32 and labels.shape == (h, w)
    n = int(labels.max())
    assert n > 40
    table = pd.read_csv(names["csv"])
    pd.testing.assert_frame_equal(table, pd.read_parquet(names["parquet"]), check_exact=False, rtol=1e-9)
    # ids 1..N, areas == label pixel counts, scores == mean foreground probability of the object
    assert table["id"].tolist() == list(range(1, n + 1))
    assert np.array_equal(np.unique(labels[labels > 0]), np.arange(1, n + 1))
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    assert np.array_equal(table["area_px"].to_numpy(), counts)
    fg = fake_maps(img[None])[0, 0].astype(np.float64)
    mean_fg = np.bincount(labels.ravel(), weights=fg.ravel(), minlength=n + 1)[1:] / counts
    np.testing.assert_allclose(table["score"], mean_fg, rtol=1e-5)
    assert table["score"].std() > 0.01
    np.testing.assert_allclose(table["area_um2"], counts * 0.0625)
    for col in ("perimeter_px", "eccentricity", "solidity", "mean_od_hematoxylin", "mean_od_eosin",
                "centroid_x", "centroid_y"):
        assert table[col].notna().all(), col
    rows, cols = np.nonzero(labels == 7)
    assert table.loc[6, "centroid_x"] == pytest.approx(cols.mean() + 0.5)
    assert table.loc[6, "centroid_y"] == pytest.approx(rows.mean() + 0.5)
    # QuPath GeoJSON (users-and-ecosystem.md §3.1)
    raw = json.loads(names["geojson"].read_text(encoding="utf-8"))
    assert raw["type"] == "FeatureCollection"
    feats = raw["features"]
    assert len(feats) == n
    for i, f in enumerate(feats, start=1):
        assert f["type"] == "Feature"
        assert str(uuid.UUID(f["id"])) == f["id"] == feature(Polygon(), i, id_namespace="slide_a")["id"]
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert isinstance(props["classification"]["name"], str)
        assert len(props["classification"]["color"]) == 3
        meas = props["measurements"]
        assert all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in meas.values())
        assert meas["label_id"] == i
        assert meas["area_px"] == counts[i - 1]
        assert meas["score"] == pytest.approx(mean_fg[i - 1], rel=1e-5)
        geom = shape(f["geometry"])
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon") and geom.is_valid and not geom.is_empty
        x0, y0, x1, y1 = geom.bounds
        assert 0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h
        # traced through edge midpoints: slightly smaller than the pixel count, in the object's place
        assert 0.45 * counts[i - 1] <= geom.area <= counts[i - 1]
        r, c = np.nonzero(labels == i)
        assert geom.buffer(1.0).contains(Point(c.mean() + 0.5, r.mean() + 0.5))
        assert x0 >= c.min() and x1 <= c.max() + 1 and y0 >= r.min() and y1 <= r.max() + 1
    prov = json.loads(names["provenance"].read_text(encoding="utf-8"))
    assert prov["model"]["name"] == "fake" and prov["n_objects"] == n and prov["image_shape"] == [h, w]
    assert prov["parameters"]["tile"] == 128 and prov["parameters"]["chunk"] == 128
    assert prov["parameters"]["ais"]["foreground_threshold"] == 0.5
    assert {"read_s", "segment_s", "measure_s", "write_s", "total_s"} <= set(prov["timings"])
    assert "histosam_version" in prov and Path(prov["outputs"]["geojson"]) == names["geojson"]


def test_tiling_invariance_public_api(image_file, tmp_path, patched_predictor):
    path, img = image_file
    model = FakeModel()
    ref = histosam.segment(img, model, tile=1024, halo=0, chunk=1024)  # one tile, one chunk
    assert ref.max() > 40
    # some objects touch (clumps split by the watershed), so the test covers more than isolated blobs
    touching = (ref[:, 1:] != ref[:, :-1]) & (ref[:, 1:] > 0) & (ref[:, :-1] > 0)
    assert touching.any()
    for tile, halo, chunk in [(128, 32, 128), (256, 64, 256), (100, 8, 96)]:
        labels = histosam.segment(img, model, tile=tile, halo=halo, chunk=chunk)
        assert same_up_to_relabelling(labels, ref), (tile, halo, chunk)
        names = run(path, tmp_path / f"out{tile}", tile=tile, halo=halo, chunk=chunk)
        assert same_up_to_relabelling(read_labels(names["labels"]), ref), (tile, halo, chunk)


@pytest.mark.parametrize("mpp", [0.5, 0.15])
def test_mpp_resampling_matches_segment(tmp_path, patched_predictor, mpp):
    img = he_image(150, 170, seed=2)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    kw = dict(mpp=mpp, tile=128, halo=32, chunk=128, center_distance_threshold=0.8)  # seeds in small nuclei
    expected = histosam.segment(img, FakeModel(), **kw)
    names = run(path, tmp_path / "out", **kw)
    labels = read_labels(names["labels"])
    assert labels.shape == img.shape[:2] and labels.max() > 5
    assert same_up_to_relabelling(labels, expected)
    table = pd.read_parquet(names["parquet"])
    n = int(labels.max())
    assert table["id"].tolist() == list(range(1, n + 1))
    # measured where segmented (histosam.measure): area_px = working-frame pixel count x (original/working)^2,
    # close to the nearest-resampled label count (exact equality with a working-frame run: test_measure_schema)
    np.testing.assert_allclose(table["area_px"], np.bincount(labels.ravel())[1:], rtol=0.1, atol=4)
    prov = json.loads(names["provenance"].read_text(encoding="utf-8"))
    assert prov["parameters"]["resample_factor"] == mpp / 0.25
    feats = read_geojson(names["geojson"])
    assert len(feats) == n
    xmax = max(shape(f["geometry"]).bounds[2] for f in feats)
    assert xmax <= img.shape[1] and xmax > 0.8 * img.shape[1]  # original pixels, not working pixels


def test_mpp_stated_by_a_tiff_is_used(tmp_path, patched_predictor):
    """Without ``mpp``, a TIFF's own pixel size resamples the image (same result as passing it); a print
    resolution (72 dpi) is not taken for one; a given ``mpp`` wins over the file's."""
    import tifffile

    img = he_image(150, 170, seed=2)
    kw = dict(tile=128, halo=32, chunk=128, center_distance_threshold=0.8)
    tagged, printed = tmp_path / "tagged.tif", tmp_path / "printed.tif"
    tifffile.imwrite(tagged, img, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    tifffile.imwrite(printed, img, resolution=(72, 72), resolutionunit="INCH")

    def parameters(names):
        return json.loads(names["provenance"].read_text(encoding="utf-8"))["parameters"]

    names = run(tagged, tmp_path / "a", **kw)
    p = parameters(names)
    assert (p["mpp"], p["mpp_source"], p["resample_factor"]) == (pytest.approx(0.5), "file", pytest.approx(2.0))
    assert same_up_to_relabelling(read_labels(names["labels"]), histosam.segment(img, FakeModel(), mpp=0.5, **kw))
    p = parameters(run(printed, tmp_path / "b", **kw))
    assert (p["mpp"], p["mpp_source"], p["resample_factor"]) == (None, "none", 1.0)
    p = parameters(run(tagged, tmp_path / "c", mpp=0.25, **kw))
    assert (p["mpp"], p["mpp_source"], p["resample_factor"]) == (0.25, "given", 1.0)


def test_resume_overwrite_and_gz(image_file, tmp_path):
    path, _ = image_file
    out = tmp_path / "out"
    names = run(path, out, tile=128, halo=32)
    stamp = {k: p.stat().st_mtime_ns for k, p in names.items()}
    assert is_complete(path, out)
    again = run(path, out, tile=128, halo=32)
    assert again == names and {k: p.stat().st_mtime_ns for k, p in again.items()} == stamp
    gz = run(path, out, tile=128, halo=32, geojson_gz=True)  # another GeoJSON flavour: not complete
    assert gz["geojson"].name == "slide_a.geojson.gz"
    assert len(read_geojson(gz["geojson"])) == len(read_geojson(names["geojson"]))
    assert is_complete(path, out, geojson_gz=True) and not is_complete(path, out)
    run(path, out, tile=128, halo=32, overwrite=True)
    assert names["provenance"].stat().st_mtime_ns != stamp["provenance"]


def test_large_images_get_ome_zarr_labels(image_file, tmp_path, monkeypatch):
    path, _ = image_file
    tif = read_labels(run(path, tmp_path / "a", tile=128, halo=32, chunk=128)["labels"])
    monkeypatch.setattr(outputs_mod, "LARGE_PIXELS", 10_000)
    names = run(path, tmp_path / "b", tile=128, halo=32, chunk=128)
    assert names["labels"].name == "slide_a_labels.ome.zarr" and names["labels"].is_dir()
    assert np.array_equal(read_labels(names["labels"]), tif)
    assert is_complete(path, tmp_path / "b")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_crash_mid_image_leaves_no_final_files(image_file, tmp_path, monkeypatch):
    from histosam.pipeline import image_job

    path, _ = image_file
    real_add, calls = image_job._Writers.add, []

    def crashing_add(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_add(self, *a, **k)

    monkeypatch.setattr(image_job._Writers, "add", crashing_add)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(path, out, tile=128, halo=32, chunk=128)
    assert not out.exists()  # no half-written final file, no temp file, no empty folder left by the failed run


def test_crash_while_overwriting_keeps_old_files_and_is_not_complete(image_file, tmp_path, monkeypatch):
    from histosam.pipeline import image_job

    path, _ = image_file
    out = tmp_path / "out"
    names = run(path, out, tile=128, halo=32)
    old = {k: names[k].read_bytes() for k in ("labels", "geojson")}
    real = image_job.write_table

    def crash_on_parquet(p, table):
        if str(p).endswith(".parquet"):
            raise OSError("disk full (simulated)")
        return real(p, table)

    monkeypatch.setattr(image_job, "write_table", crash_on_parquet)
    with pytest.raises(OSError, match="simulated"):
        run(path, out, tile=128, halo=32, overwrite=True)
    assert not is_complete(path, out) and not names["provenance"].exists()
    assert {k: names[k].read_bytes() for k in ("labels", "geojson")} == old
    assert _leftovers(out) == []
    monkeypatch.setattr(image_job, "write_table", real)
    again = run(path, out, tile=128, halo=32)  # no overwrite: the incomplete set is recomputed
    assert is_complete(path, out) and again["provenance"].exists()


def test_amg_mode_with_random_nano(tmp_path):
    import torch

    from histosam.models.build import build_model

    torch.manual_seed(0)
    model = build_model("nano").eval()
    img = he_image(128, 140, seed=3)
    path = tmp_path / "amg.png"
    Image.fromarray(img).save(path)
    names = segment_file(path, tmp_path / "out", model, mode="amg", progress=False, points_per_side=4,
                         pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9)
    labels = read_labels(names["labels"])
    table = pd.read_csv(names["csv"])
    n = int(labels.max())
    assert n >= 1 and len(read_geojson(names["geojson"])) == n == len(table)
    assert np.array_equal(table["area_px"].to_numpy(), np.bincount(labels.ravel())[1:])
    assert all(shapely.is_valid(shape(f["geometry"])) for f in read_geojson(names["geojson"]))
    prov = json.loads(names["provenance"].read_text(encoding="utf-8"))
    assert prov["parameters"]["mode"] == "amg" and prov["parameters"]["amg"]["points_per_side"] == 4


def test_bad_parameters_and_images(image_file, tmp_path):
    from histosam.errors import HistosamError, ImageError

    path, _ = image_file
    run(path, tmp_path / "done")
    with pytest.raises(HistosamError, match="unknown AIS/engine parameter"):  # checked before anything changes
        run(path, tmp_path / "done", bogus=1, overwrite=True)
    assert is_complete(path, tmp_path / "done")
    with pytest.raises(HistosamError, match="min_size"):
        run(path, tmp_path / "o", min_size=-3)
    with pytest.raises(HistosamError, match="unknown AMG"):
        run(path, tmp_path / "o", mode="amg", foreground_threshold=0.5)
    with pytest.raises(HistosamError, match="mode"):
        run(path, tmp_path / "o", mode="xyz")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="bad.png"):
        run(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_trim_budget_env_override(image_file, tmp_path, monkeypatch):
    """HISTOSAM_TRIM_ABOVE_MB sets the resident size above which a chunk hands free pages back; a bad value
    is a clear error before anything is written."""
    from histosam.errors import HistosamError
    from histosam.pipeline import image_job

    image_file = image_file[0]
    budgets = []
    monkeypatch.setattr(image_job, "release_freed_memory", lambda above_mb: budgets.append(above_mb))
    monkeypatch.setenv("HISTOSAM_TRIM_ABOVE_MB", "123.5")
    segment_file(image_file, tmp_path / "a", predict_maps=fake_maps, progress=False)
    assert budgets and set(budgets) == {123.5}
    monkeypatch.setenv("HISTOSAM_TRIM_ABOVE_MB", "lots")
    with pytest.raises(HistosamError, match="HISTOSAM_TRIM_ABOVE_MB"):
        segment_file(image_file, tmp_path / "b", predict_maps=fake_maps, progress=False)
    assert not (tmp_path / "b").exists()  # refused before anything was read or written
