"""Reruns and resumes never reuse results of another model, other parameters or another input (run keys)."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
import torch
from PIL import Image

from histosam.cli.main import main
from histosam.io.runkey import RunMismatchError, changed_keys, check_run_key
from histosam.pipeline import segment_file
from histosam.wsi.fake import colour_threshold_maps
from histosam.wsi.pipeline import segment_slide
from histosam.wsi.store import StoreMismatchError
from histosam.wsi.synthetic import write_synthetic_slide
from testlib import he_image


def _nano(seed: int, tmp_path, name: str):
    from histosam.models.build import build_model
    from histosam.registry.formats import save_histosam

    torch.manual_seed(seed)
    return save_histosam(build_model("nano"), tmp_path / name)


@pytest.fixture
def fast_maps(monkeypatch):
    import histosam.inference.maps as maps_mod

    monkeypatch.setattr(maps_mod, "make_map_predictor", lambda *a, **k: colour_threshold_maps)


def test_changed_keys_names_each_difference():
    a = {"model": {"name": "m", "weights": "x"}, "parameters": {"tile": 1, "p": {"a": 1}}}
    b = {"model": {"name": "m", "weights": "y"}, "parameters": {"tile": 1, "p": {"a": 2, "b": 0}}}
    assert changed_keys(a, a) == []
    assert changed_keys(a, b) == ["model.weights", "parameters.p.a", "parameters.p.b"]
    with pytest.raises(RunMismatchError, match=r"changed: model\.weights, parameters\.p\.a"):
        check_run_key(a, b, what="x")
    with pytest.raises(RunMismatchError, match="without a run key"):
        check_run_key(None, b, what="x")
    check_run_key(a, dict(a), what="x")  # equal: no error


def test_image_rerun_with_other_model_param_or_input_is_refused(tmp_path, fast_maps):
    img = tmp_path / "a.png"
    Image.fromarray(he_image(160, 160)).save(img)
    (tmp_path / "other").mkdir()
    m1, m2 = _nano(0, tmp_path, "m.pt"), _nano(1, tmp_path / "other", "m.pt")
    out = tmp_path / "out"
    names = segment_file(img, out, m1, progress=False)
    prov = json.loads(names["provenance"].read_text())
    assert len(prov["run_key"]["model"]["weights"]) == 32
    stamp = names["provenance"].stat().st_mtime_ns
    # same model (another file with the same weights counts as the same model), same input and parameters: reused
    same = tmp_path / "copy.pt"
    same.write_bytes(m1.read_bytes())
    assert segment_file(img, out, same, progress=False)["provenance"].stat().st_mtime_ns == stamp
    # same file name and model name, other weights: refused, nothing rewritten
    with pytest.raises(RunMismatchError, match=r"changed: model\.weights"):
        segment_file(img, out, m2, progress=False)
    with pytest.raises(RunMismatchError, match=r"changed: parameters\.params\.min_size"):
        segment_file(img, out, m1, progress=False, min_size=40)
    with pytest.raises(RunMismatchError, match=r"changed: parameters\.mpp"):
        segment_file(img, out, m1, progress=False, mpp=0.5)
    assert names["provenance"].stat().st_mtime_ns == stamp
    # the input replaced by another image under the same name
    Image.fromarray(he_image(160, 160, seed=3)).save(img)
    os.utime(img, ns=(stamp + 10**9, stamp + 10**9))
    with pytest.raises(RunMismatchError, match=r"changed: input\."):
        segment_file(img, out, m1, progress=False)
    # --overwrite recomputes and records the new key
    names = segment_file(img, out, m2, progress=False, overwrite=True)
    assert json.loads(names["provenance"].read_text())["run_key"]["model"]["weights"] != \
        prov["run_key"]["model"]["weights"]


def test_cli_segment_says_what_changed(tmp_path, fast_maps, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(he_image(128, 128)).save(img)
    (tmp_path / "o").mkdir()
    m1, m2 = _nano(0, tmp_path, "m.pt"), _nano(1, tmp_path / "o", "m.pt")
    out = tmp_path / "out"
    assert main(["segment", str(img), "-o", str(out), "--model", str(m1), "--no-progress"]) == 0
    assert main(["segment", str(img), "-o", str(out), "--model", str(m1), "--no-progress"]) == 0
    assert "skipped" in capsys.readouterr().err
    assert main(["segment", str(img), "-o", str(out), "--model", str(m2), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "changed: model.weights" in err and "--overwrite" in err and "Traceback" not in err
    assert main(["segment", str(img), "-o", str(out), "--model", str(m1), "--param", "min_size=30",
                 "--no-progress"]) == 1
    assert "changed: parameters.params.min_size" in capsys.readouterr().err
    assert main(["segment", str(img), "-o", str(out), "--model", str(m2), "--overwrite", "--no-progress"]) == 0


def _other_maps(tiles):
    """Another 'model': the colour-threshold maps with a lower foreground."""
    return colour_threshold_maps(tiles) * np.float32(0.9)


OPTS = dict(target_mpp=0.5, tile=256, halo=32, chunk=512, context=64, batch_size=4)


def test_slide_resume_with_other_model_is_refused(tmp_path):
    slide = write_synthetic_slide(tmp_path / "syn.tif", 2048, 2048, mpp=0.5, levels=3)
    out = tmp_path / "out"
    segment_slide(slide, out, colour_threshold_maps, **OPTS)
    # an interrupted run: chunks committed, no provenance yet
    (out / "syn.provenance.json").unlink()
    with sqlite3.connect(out / "syn.chunks.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] > 0
    with pytest.raises(StoreMismatchError, match=r"changed: model\.predictor"):
        segment_slide(slide, out, _other_maps, **OPTS)
    prov = segment_slide(slide, out, colour_threshold_maps, **OPTS)  # the same model resumes
    assert prov["chunks_computed_this_run"] == 0 and prov["run_key"]["model"]["predictor"] == "colour_threshold_maps"
    # a finished run and another model or parameter: refused, never skipped
    with pytest.raises(RunMismatchError, match=r"changed: model\.predictor"):
        segment_slide(slide, out, _other_maps, **OPTS)
    with pytest.raises(RunMismatchError, match=r"changed: parameters\.use_tissue"):
        segment_slide(slide, out, colour_threshold_maps, use_tissue=False, **OPTS)
    again = segment_slide(slide, out, colour_threshold_maps, **OPTS)
    assert again["skipped"] and again["chunks_computed_this_run"] == 0
    prov = segment_slide(slide, out, _other_maps, overwrite=True, **OPTS)
    assert prov["chunks_computed_this_run"] == prov["chunks_with_tissue"] > 0


def test_slide_model_identity_is_the_weights_hash(tmp_path):
    from histosam.wsi.pipeline import ModelMaps

    m1 = _nano(0, tmp_path, "a.pt")
    (tmp_path / "b").mkdir()
    m2 = _nano(1, tmp_path / "b", "a.pt")
    i1, i2 = ModelMaps(str(m1)).identity, ModelMaps(str(m2)).identity
    assert i1["config"] == i2["config"] and i1["weights"] != i2["weights"]
    assert ModelMaps(str(m1)).identity == i1
