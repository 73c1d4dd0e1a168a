"""Slide pipeline: equality with an untiled run, resume after SIGKILL, Dask workers, cohorts, errors."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from histosam.errors import SlideError
from histosam.io.runkey import RunMismatchError
from histosam.postprocess.ais import watershed_from_maps
from histosam.wsi.fake import colour_threshold_maps
from histosam.wsi.pipeline import NoTissueWarning, collect_slides, segment_cohort, segment_slide
from histosam.wsi.reader import MissingMppWarning, open_slide
from histosam.wsi.roi import parse_roi
from histosam.wsi.synthetic import write_synthetic_slide

OPTS = dict(target_mpp=0.5, tile=256, halo=32, chunk=512, context=64, batch_size=4)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("wsi") / "syn.tif", 2048, 2048, mpp=0.5, levels=3)


def _outputs(outdir, stem="syn"):
    with gzip.open(outdir / f"{stem}.geojson.gz", "rt") as f:
        gj = f.read()
    return {"geojson": gj, "csv": (outdir / f"{stem}.csv").read_bytes(),
            "overlay": (outdir / f"{stem}_overlay.png").read_bytes()}


def _untiled(slide, box=None):
    """(first pixel, area) of every object of a one-piece AIS on the whole (or boxed) slide."""
    with open_slide(slide) as s:
        x, y, w, h = box or (0, 0, *s.dimensions)
        img = s.read_region(x, y, w, h, 0)
    labels = watershed_from_maps(colour_threshold_maps(img)[0])
    out = set()
    from scipy import ndimage

    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        r0 = sl[0].start
        c0 = sl[1].start + int(np.argmax(labels[r0, sl[1]] == i))
        out.add((r0 + y, c0 + x, int((labels[sl] == i).sum())))
    return out


def _records(outdir, stem="syn"):
    db = sqlite3.connect(outdir / f"{stem}.chunks.sqlite")
    import zlib

    recs = []
    for (blob,) in db.execute("SELECT data FROM chunks ORDER BY idx"):
        recs += json.loads(zlib.decompress(blob))
    db.close()
    return recs


def test_equals_untiled_run(slide, tmp_path):
    prov = segment_slide(slide, tmp_path, colour_threshold_maps, csv_table=True, **OPTS)
    recs = _records(tmp_path)
    got = [(r["first"][0], r["first"][1], r["area_px"]) for r in recs]
    assert len(got) == len(set(got))  # no duplicates across chunk borders
    ref = _untiled(slide)
    assert len(ref) > 500
    assert set(got) == ref  # no cut or missing nuclei either
    assert prov["objects"] == len(ref) and prov["chunks_with_tissue"] < prov["chunks_total"] == 16
    # outputs agree with each other
    gj = json.loads(_outputs(tmp_path)["geojson"])
    assert len(gj["features"]) == len(ref)
    f0 = gj["features"][0]
    assert f0["properties"]["objectType"] == "detection" and f0["geometry"]["type"] == "Polygon"
    assert f0["properties"]["measurements"]["histosam id"] == 1
    import pandas as pd

    table = pd.read_parquet(tmp_path / "syn.parquet")
    assert table["id"].tolist() == list(range(1, len(ref) + 1))
    assert table["area_um2"].iloc[0] == pytest.approx(recs[0]["area_px"] * 0.25)
    assert (tmp_path / "syn_tissue.png").exists() and (tmp_path / "syn_overlay.png").exists()
    # a nucleus polygon has the right size in level-0 pixels (radius 6 disc, area ~113)
    from shapely.geometry import Polygon

    areas = [Polygon(f["geometry"]["coordinates"][0]).area for f in gj["features"][:50]]
    assert 60 < np.median(areas) < 140
    # rerun: everything already committed, nothing recomputed, same outputs
    before = _outputs(tmp_path)
    prov2 = segment_slide(slide, tmp_path, colour_threshold_maps, csv_table=True, **OPTS)
    assert prov2["chunks_computed_this_run"] == 0 and _outputs(tmp_path) == before


@pytest.mark.parametrize("context", [64, 8, 4])
def test_roi_box_equals_untiled_crop(slide, tmp_path, context):
    # context 8 or 4: clumps at chunk borders are cut at first and those chunks are redone with more context
    roi = parse_roi("300,400,700,500")
    opts = {**OPTS, "chunk": 256, "context": context}
    segment_slide(slide, tmp_path, colour_threshold_maps, roi=roi, use_tissue=False, **opts)
    got = {(r["first"][0] + 400, r["first"][1] + 300, r["area_px"]) for r in _records(tmp_path)}
    assert got == _untiled(slide, (300, 400, 700, 500)) and len(got) > 50


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from histosam.wsi.fake import colour_threshold_maps
    from histosam.wsi.pipeline import segment_slide
    def slow(tiles):
        time.sleep(0.4)
        return colour_threshold_maps(tiles)
    slow.__name__ = "colour_threshold_maps"  # the same maps, slowed down: the run key must match on resume
    segment_slide(sys.argv[1], sys.argv[2], slow, csv_table=True, target_mpp=0.5, tile=256, halo=32,
                  chunk=512, context=64, batch_size=1)
""")


def test_resume_after_sigkill_is_identical(slide, tmp_path):
    ref_dir, out = tmp_path / "ref", tmp_path / "killed"
    segment_slide(slide, ref_dir, colour_threshold_maps, csv_table=True, **{**OPTS, "batch_size": 1})
    n_chunks = len(_records_idx(ref_dir))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(slide), str(out)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    db_path = out / "syn.chunks.sqlite"
    deadline = time.time() + 120
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        if db_path.exists():
            try:
                with sqlite3.connect(db_path, timeout=1) as db:
                    committed = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            except sqlite3.OperationalError:
                committed = 0
            if committed >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "syn.geojson.gz").exists()
    partial = len(_records_idx(out))
    assert 2 <= partial < n_chunks
    prov = segment_slide(slide, out, colour_threshold_maps, csv_table=True, **{**OPTS, "batch_size": 1})
    assert prov["chunks_computed_this_run"] == n_chunks - partial
    assert _outputs(out) == _outputs(ref_dir)
    assert not list(out.glob(".*.tmp"))


def _records_idx(outdir):
    with sqlite3.connect(outdir / "syn.chunks.sqlite") as db:
        return [r[0] for r in db.execute("SELECT idx FROM chunks")]


@pytest.mark.slow
def test_dask_one_vs_two_workers(slide, tmp_path):
    from dask.distributed import Client, LocalCluster

    results = {}
    for n in (1, 2):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                Client(cl) as client:
            prov = segment_slide(slide, tmp_path / f"w{n}", colour_threshold_maps, client=client,
                                 csv_table=True, **OPTS)
            assert prov["workers"] == n
        results[n] = _outputs(tmp_path / f"w{n}")
    segment_slide(slide, tmp_path / "seq", colour_threshold_maps, csv_table=True, **OPTS)
    assert results[1] == results[2] == _outputs(tmp_path / "seq")


def test_store_refuses_other_parameters(slide, tmp_path):
    segment_slide(slide, tmp_path, colour_threshold_maps, **OPTS)
    with pytest.raises(RunMismatchError, match=r"changed: parameters\.context"):
        segment_slide(slide, tmp_path, colour_threshold_maps, **{**OPTS, "context": 96})
    prov = segment_slide(slide, tmp_path, colour_threshold_maps, overwrite=True, **{**OPTS, "context": 96})
    assert prov["chunks_computed_this_run"] == prov["chunks_with_tissue"]


def test_empty_slide_and_missing_mpp(tmp_path):
    empty = write_synthetic_slide(tmp_path / "empty.tif", 1024, 1024, mpp=None, levels=2, patches=[])
    with pytest.warns(MissingMppWarning), pytest.warns(NoTissueWarning, match="no tissue detected"):
        prov = segment_slide(empty, tmp_path / "o", colour_threshold_maps, **OPTS)
    assert prov["objects"] == 0 and prov["chunks_with_tissue"] == 0
    assert prov["slide"]["mpp_source"] == "default"
    with gzip.open(tmp_path / "o" / "empty.geojson.gz", "rt") as f:
        assert json.load(f) == {"type": "FeatureCollection", "features": []}
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingMppWarning)
        prov = segment_slide(empty, tmp_path / "o2", colour_threshold_maps, mpp=0.5, use_tissue=False,
                             **OPTS)
    assert prov["slide"]["mpp_source"] == "user" and prov["objects"] == 0


def test_cohort_skips_finished_and_survives_bad_slide(slide, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    good = write_synthetic_slide(folder / "a.tif", 2048, 1536, mpp=0.5, levels=2)
    (folder / "b.svs").write_bytes(b"garbage")
    (folder / "notes.txt").write_text("ignored")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(f"path,mpp\nslides/a.tif,0.5\n{slide},\n")
    assert collect_slides([str(folder)]) == [(folder / "a.tif", None), (folder / "b.svs", None)]
    assert collect_slides([str(csv_path)]) == [(folder / "a.tif", 0.5), (slide, None)]
    assert collect_slides([str(folder / "*.tif")]) == [(good, None)]
    logs = []
    status = segment_cohort([str(folder)], tmp_path / "out", colour_threshold_maps, log=logs.append, **OPTS)
    assert status[str(good)] == "done"
    assert json.loads((tmp_path / "out" / "a.provenance.json").read_text())["objects"] > 100
    assert status[str(folder / "b.svs")].startswith("error: cannot open slide")
    status = segment_cohort([str(folder)], tmp_path / "out", colour_threshold_maps, log=logs.append, **OPTS)
    assert status[str(good)] == "skipped" and status[str(folder / "b.svs")].startswith("error")
    with pytest.raises(SlideError):
        segment_slide(folder / "b.svs", tmp_path / "x", colour_threshold_maps, **OPTS)


def test_polygon_roi_keeps_objects_starting_inside(slide, tmp_path):
    diamond = [[650, 400], [1000, 650], [650, 900], [300, 650], [650, 400]]
    p = tmp_path / "roi.geojson"
    p.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [diamond]}}))
    roi = parse_roi(str(p))
    segment_slide(slide, tmp_path / "o", colour_threshold_maps, roi=roi, use_tissue=False, **OPTS)
    got = {(r["first"][0] + 400, r["first"][1] + 300, r["area_px"]) for r in _records(tmp_path / "o")}
    inside = roi.mask(0, 0, 1400, 1000)
    ref = {o for o in _untiled(slide, (300, 400, 700, 500)) if inside[o[0], o[1]]}
    assert got == ref and 20 < len(got) < len(_untiled(slide, (300, 400, 700, 500)))


SHARED = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wsi"


@pytest.mark.data
@pytest.mark.skipif(not SHARED.exists(), reason="shared data absent")
def test_real_svs_smoke(tmp_path):
    prov = segment_slide(SHARED / "CMU-1-Small-Region.svs", tmp_path, colour_threshold_maps,
                         roi=parse_roi("800,1200,1024,1024"), **{**OPTS, "target_mpp": 0.499})
    assert prov["slide"]["mpp"] == pytest.approx(0.499) and prov["slide"]["mpp_source"] == "metadata"
    assert prov["objects"] > 20 and prov["tissue_area_mm2"] > 0.3
    with gzip.open(tmp_path / "CMU-1-Small-Region.geojson.gz", "rt") as f:
        gj = json.load(f)
    xs = [x for f in gj["features"] for x, _ in f["geometry"]["coordinates"][0]]
    assert 800 <= min(xs) and max(xs) <= 1824 + 20


def test_full_disk_while_writing_outputs_loses_nothing(slide, tmp_path, monkeypatch):
    """A full disk (ENOSPC) while the final outputs are written: clear error, no half-written outputs, the
    committed chunks survive, and a rerun after space is freed produces the normal outputs."""
    import errno

    from histosam.io import geojson as geojson_mod

    real_add = geojson_mod.GeoJSONWriter.add

    def full_disk(self, features):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(geojson_mod.GeoJSONWriter, "add", full_disk)
    with pytest.raises(OSError, match="No space left"):
        segment_slide(slide, tmp_path, colour_threshold_maps, csv_table=True, **OPTS)
    assert not (tmp_path / "syn.geojson.gz").exists()
    assert not (tmp_path / "syn.parquet").exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp*"))
    committed = _records(tmp_path)
    assert committed  # chunk results were committed before the outputs were assembled
    monkeypatch.setattr(geojson_mod.GeoJSONWriter, "add", real_add)
    prov = segment_slide(slide, tmp_path, colour_threshold_maps, csv_table=True, **OPTS)
    assert prov["chunks_computed_this_run"] == 0
    gj = json.loads(_outputs(tmp_path)["geojson"])
    assert len(gj["features"]) == prov["objects"] > 0
