"""Typed nuclei on slides: the classes of a slide region equal those of the same region segmented as one image,
the outputs carry them (QuPath classification, class / prob_<name> columns, overlay, provenance counts), and
resuming and run keys still hold."""

from __future__ import annotations

import gzip
import json
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from histosam.io.runkey import RunMismatchError
from histosam.postprocess.ais import AISParams
from histosam.tiling.engine import iter_ais_chunks
from histosam.wsi.chunks import class_columns
from histosam.wsi.fake import colour_threshold_maps
from histosam.wsi.pipeline import segment_slide
from histosam.wsi.reader import open_slide
from histosam.wsi.roi import parse_roi
from histosam.wsi.synthetic import write_synthetic_slide

NAMES = ("background", "sparse", "medium", "dense")
OPTS = dict(target_mpp=0.5, tile=256, halo=32, chunk=256, context=64, batch_size=4)


class DensityClasses:
    """Fake typed maps: the colour-threshold AIS maps, then class probabilities that depend on how many nucleus
    pixels lie within 12 px (so neighbouring nuclei get different classes). Integer counts, so the maps of a pixel
    are exact whatever the tile; a halo >= 12 px makes tiled maps equal untiled ones."""

    class_names = NAMES
    __name__ = "density_classes"

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        base = colour_threshold_maps(tiles)
        fg = base[:, 0].astype(np.float64)
        density = ndimage.uniform_filter(fg, size=(1, 25, 25), mode="nearest")  # fraction of nucleus pixels
        centres = np.array([0.05, 0.15, 0.3])
        logits = -((density[:, None] - centres[None, :, None, None]) / 0.05) ** 2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = 0.9 * p / p.sum(axis=1, keepdims=True)
        probs = np.concatenate([np.full_like(density, 0.1)[:, None], p], axis=1)
        return np.concatenate([base, probs.astype(np.float32)], axis=1)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("wsi") / "syn.tif", 2048, 2048, mpp=0.5, levels=3)


def _records(outdir, stem="syn"):
    import zlib

    with sqlite3.connect(outdir / f"{stem}.chunks.sqlite") as db:
        rows = db.execute("SELECT data FROM chunks ORDER BY idx").fetchall()
    return [r for (blob,) in rows for r in json.loads(zlib.decompress(blob))]


def _geojson(outdir, stem="syn"):
    with gzip.open(outdir / f"{stem}.geojson.gz", "rt") as f:
        return json.load(f)["features"]


def test_slide_region_classes_equal_one_image(slide, tmp_path):
    """Chunks of 256 px with tiles of 256 + 32 px halo vs the region as one tile and one chunk."""
    x, y, w, h = 300, 400, 700, 560
    prov = segment_slide(slide, tmp_path, DensityClasses(), roi=parse_roi(f"{x},{y},{w},{h}"), use_tissue=False,
                         csv_table=True, **OPTS)
    recs = _records(tmp_path)
    with open_slide(slide) as s:
        img = s.read_region(x, y, w, h, 0)
    (one,) = list(iter_ais_chunks(lambda r0, c0, hh, ww: img[r0:r0 + hh, c0:c0 + ww], (h, w), DensityClasses(),
                                  tile=max(h, w), halo=0, chunk=max(h, w), params=AISParams(), channels=3 + len(NAMES)))
    assert prov["chunks_computed_this_run"] > 4 and one.n > 200
    best = 1 + np.argmax(one.class_probs[:, 1:], axis=1)
    ref = {(int(r), int(c), int(a)): (NAMES[k], p) for (r, c), a, k, p in
           zip(one.first_pixels, one.areas, best, one.class_probs)}
    got = {(rec["first"][0] + y, rec["first"][1] + x, int(rec["area_px"])): rec for rec in recs}
    assert {(r + y, c + x, a) for r, c, a in ref} == set(got)
    for (r, c, a), (name, p) in ref.items():
        rec = got[(r + y, c + x, a)]
        assert rec["class"] == name
        np.testing.assert_allclose([rec[f"prob_{n}"] for n in NAMES], p, rtol=0, atol=1e-6)
    counts = {n: sum(v[0] == n for v in ref.values()) for n in NAMES[1:]}
    assert sum(v > 0 for v in counts.values()) >= 2  # the test means something: several classes occur
    assert prov["class_counts"] == counts
    assert prov["classes"]["names"] == list(NAMES)
    # outputs: QuPath classification, probabilities as measurements, class columns; all agree with the records
    feats = _geojson(tmp_path)
    table = pd.read_parquet(tmp_path / "syn.parquet")
    csv = pd.read_csv(tmp_path / "syn.csv")
    assert list(table.columns)[-len(NAMES) - 2:] == [*class_columns(NAMES), "chunk"] == list(csv.columns)[-6:]
    assert len(feats) == len(table) == len(recs)
    for f, rec, (_, row) in zip(feats, recs, table.iterrows()):
        cls = f["properties"]["classification"]
        assert cls["name"] == rec["class"] == row["class"] and len(cls["color"]) == 3
        meas = f["properties"]["measurements"]
        assert meas[f"class probability {rec['class']}"] == pytest.approx(rec[f"prob_{rec['class']}"])
    colours = {f["properties"]["classification"]["name"]: tuple(f["properties"]["classification"]["color"])
               for f in feats}
    assert len(set(colours.values())) == len(colours) >= 2
    # the overlay is coloured by class: every class colour present in it
    overlay = np.asarray(Image.open(tmp_path / "syn_overlay.png").convert("RGB")).reshape(-1, 3)
    present = {tuple(c) for c in np.unique(overlay, axis=0)}
    assert all(c in present for c in colours.values())


def test_model_slide_region_equals_segment_image(slide, tmp_path):
    """histosam-nano-classes: the slide's table (ROI of a slide, 512 px tiles and chunks) and the image table of
    ``histosam segment``'s job on the same region agree nucleus by nucleus, class columns included."""
    import histosam
    from histosam.pipeline.image_job import segment_file
    from histosam.wsi.pipeline import ModelMaps

    big = write_synthetic_slide(tmp_path / "big.tif", 2048, 2048, mpp=0.25, levels=2)
    x, y, w, h = 300, 400, 900, 700
    with open_slide(big) as s:
        Image.fromarray(s.read_region(x, y, w, h, 0)).save(tmp_path / "region.png")
    model = histosam.load_model("histosam-nano-classes", device="cpu")
    segment_file(tmp_path / "region.png", tmp_path / "img", model=model, mpp=0.25, progress=False)
    img = pd.read_csv(next((tmp_path / "img").glob("*.csv")))
    prov = segment_slide(big, tmp_path / "sl", ModelMaps("histosam-nano-classes", "cpu"), target_mpp=0.25,
                         roi=parse_roi(f"{x},{y},{w},{h}"), use_tissue=False, tile=512, halo=224, chunk=512,
                         context=128, batch_size=2)
    sl = pd.read_parquet(tmp_path / "sl" / "big.parquet")
    assert prov["chunks_computed_this_run"] == 4 and len(sl) == len(img) > 200
    cols = class_columns(model.config.class_names)
    assert set(cols) <= set(img.columns) and set(cols) <= set(sl.columns)
    sl = sl.assign(centroid_x=sl.centroid_x - x, centroid_y=sl.centroid_y - y)
    key = ["centroid_y", "centroid_x"]
    a = img.round({k: 4 for k in key}).sort_values(key).reset_index(drop=True)
    b = sl.round({k: 4 for k in key}).sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(a[key], b[key], atol=1e-4)
    assert (a["area_px"] == b["area_px"]).all() and (a["class"] == b["class"]).all()
    np.testing.assert_allclose(a[cols[1:]], b[cols[1:]], atol=1e-4)
    assert sum(prov["class_counts"].values()) == len(sl)
    assert prov["class_counts"] == {n: int((img["class"] == n).sum()) for n in model.config.class_names[1:]}


def test_resume_and_run_keys_with_classes(slide, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    segment_slide(slide, full, DensityClasses(), csv_table=True, **OPTS)
    segment_slide(slide, part, DensityClasses(), csv_table=True, **OPTS)
    # an interrupted run: outputs gone, half of the chunks committed
    for p in part.iterdir():
        if not p.name.endswith(".sqlite"):
            p.unlink()
    with sqlite3.connect(part / "syn.chunks.sqlite") as db:
        idx = [r[0] for r in db.execute("SELECT idx FROM chunks ORDER BY idx")]
        db.execute(f"DELETE FROM chunks WHERE idx IN ({','.join(map(str, idx[::2]))})")
    prov = segment_slide(slide, part, DensityClasses(), csv_table=True, **OPTS)
    assert prov["chunks_computed_this_run"] == len(idx[::2])
    for name in ("syn.csv", "syn_overlay.png"):
        assert (part / name).read_bytes() == (full / name).read_bytes()
    assert _geojson(part) == _geojson(full)  # (the gzip header names the temp file)
    assert json.loads((part / "syn.provenance.json").read_text())["class_counts"] == \
        json.loads((full / "syn.provenance.json").read_text())["class_counts"]
    # chunks without classes are never mixed with typed ones, either way
    with pytest.raises(RunMismatchError, match="parameters.classes"):
        segment_slide(slide, full, colour_threshold_maps, **OPTS)
    plain = tmp_path / "plain"
    segment_slide(slide, plain, colour_threshold_maps, **OPTS)
    (plain / "syn.provenance.json").unlink()  # unfinished: the store decides
    from histosam.errors import StoreMismatchError

    with pytest.raises(StoreMismatchError, match="classes"):
        segment_slide(slide, plain, DensityClasses(), **OPTS)


def test_run_key_changes_with_the_class_head(tmp_path):
    import torch

    from histosam.registry.formats import save_histosam
    from histosam.wsi.pipeline import ModelMaps

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from testlib import typed_nano

    names = ["background", "a", "b"]
    model = typed_nano(names)
    save_histosam(model, tmp_path / "m1.pt")
    with torch.no_grad():
        next(model.class_decoder.parameters()).add_(0.01)  # another class head, same trunk and AIS head
    (tmp_path / "b").mkdir()
    save_histosam(model, tmp_path / "b" / "m1.pt")
    i1, i2 = ModelMaps(str(tmp_path / "m1.pt")).identity, ModelMaps(str(tmp_path / "b" / "m1.pt")).identity
    assert i1["weights"] != i2["weights"]
    mm = ModelMaps(str(tmp_path / "m1.pt"))
    assert mm.class_names == tuple(names) and ModelMaps(str(tmp_path / "m1.pt"), classes=False).class_names == ()
    assert len(mm.class_colors) == 3


def test_cli_slide_prints_class_summary(tmp_path):
    big = write_synthetic_slide(tmp_path / "s.tif", 1024, 1024, mpp=0.25, levels=2)

    def run(out, *extra, model=("--model", "histosam-nano-classes")):
        cmd = [sys.executable, "-m", "histosam", "slide", str(big), *model, "-o", str(out), "--roi",
               "200,200,512,512", "--no-tissue-mask", "--tile", "512", "--chunk", "512", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    r = run(tmp_path / "o", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    prov = json.loads((tmp_path / "o" / "s.provenance.json").read_text())
    counts = prov["class_counts"]
    assert set(counts) == {"other", "inflammatory", "epithelial", "spindle-shaped"}
    assert sum(counts.values()) == prov["objects"] > 50
    names = prov["classes"]["names"][1:]  # (the provenance JSON sorts its keys; the summary keeps class order)
    assert "s.tif: by class: " + ", ".join(f"{k} {counts[k]}" for k in names) in r.stderr
    feats = _geojson(tmp_path / "o", "s")
    assert all(f["properties"]["classification"]["name"] in counts for f in feats)
    # --no-classes: the same nuclei, untyped
    r = run(tmp_path / "o2", "--device", "cpu", "--no-classes")
    assert r.returncode == 0, r.stderr
    prov2 = json.loads((tmp_path / "o2" / "s.provenance.json").read_text())
    assert prov2["class_counts"] is None and prov2["objects"] == prov["objects"] and "by class" not in r.stderr
    r = run(tmp_path / "o3", "--classes", model=("--fake-model",))
    assert r.returncode != 0 and "class head" in r.stderr and "Traceback" not in r.stderr


def test_class_channels_do_not_shrink_the_tile_cache(slide, tmp_path):
    """The tile cache holds as many tiles with a class head's channels as without: no tile is predicted twice more
    often (a small cache, so that tiles are evicted at all)."""
    plain = segment_slide(slide, tmp_path / "p", colour_threshold_maps, cache_mb=3, **OPTS)
    typed = segment_slide(slide, tmp_path / "t", DensityClasses(), cache_mb=3, **OPTS)
    assert typed["objects"] == plain["objects"]
    assert typed["tiles_predicted_this_run"] == plain["tiles_predicted_this_run"]
