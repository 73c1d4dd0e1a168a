"""``histosam segment``: inputs (files, folders, globs), bad inputs, resume, parameters, a real random model."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histosam.cli.main import main
from histosam.io.labels import read_labels
from histosam.pipeline import is_complete
from histosam.wsi.fake import colour_threshold_maps
from testlib import he_image


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A random histosam-nano saved in histosam's format (stands in for the embedded model)."""
    import torch

    from histosam.models.build import build_model
    from histosam.registry.formats import save_histosam

    torch.manual_seed(0)
    return save_histosam(build_model("nano"), tmp_path_factory.mktemp("model") / "nano-random.pt")


@pytest.fixture
def fast_maps(monkeypatch):
    """The loaded model's network is replaced by the colour-threshold predictor (fast, real nuclei)."""
    import histosam.inference.maps as maps_mod

    monkeypatch.setattr(maps_mod, "make_map_predictor", lambda *a, **k: colour_threshold_maps)


def save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ": error: " in ln]


def test_bad_inputs_reported_others_complete(tmp_path, model_file, fast_maps, capsys):
    good = save(tmp_path / "in" / "good.png", he_image(140, 150, 0))
    folder = tmp_path / "folder"
    save(folder / "good2.png", he_image(128, 200, 1))
    (folder / "broken.png").write_text("this is not a PNG")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile warns about the zero-size array it writes
        tifffile.imwrite(folder / "empty.tif", np.zeros((0, 5), np.uint8))
    missing = tmp_path / "missing.png"
    pattern = str(tmp_path / "nomatch*.png")
    out = tmp_path / "out"
    rc = main(["segment", str(good), str(folder), str(missing), pattern, "-o", str(out),
               "--model", str(model_file), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = error_lines(err)
    assert len(lines) == 4, err
    assert any(str(folder / "broken.png") in ln and "cannot be read as an image" in ln for ln in lines)
    assert any(str(folder / "empty.tif") in ln and "empty" in ln for ln in lines)
    assert any(str(missing) in ln and "no such file" in ln for ln in lines)
    assert any(pattern in ln and "no files match" in ln for ln in lines)
    assert all(ln.startswith("histosam segment: ") and "Traceback" not in err for ln in lines)
    assert "2 done, 0 skipped, 4 failed" in err
    for p, shape in ((good, (140, 150)), (folder / "good2.png", (128, 200))):
        assert is_complete(p, out)
        labels = read_labels(out / f"{p.stem}_labels.tif")
        assert labels.shape == shape and labels.max() >= 15
    assert sorted(q.name for q in out.iterdir() if "broken" in q.name or "empty" in q.name) == []


def test_resume_and_glob(tmp_path, model_file, fast_maps, capsys):
    for i in range(2):
        save(tmp_path / "in" / f"img{i}.png", he_image(128, 160, i))
    args = ["segment", str(tmp_path / "in" / "*.png"), "-o", str(tmp_path / "out"), "--model", str(model_file),
            "--no-progress", "--geojson-gz", "--tile", "96", "--halo", "16", "--chunk", "64"]
    assert main(args) == 0
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().err
    assert (tmp_path / "out" / "img0.geojson.gz").is_file() and not (tmp_path / "out" / "img0.geojson").exists()
    prov = json.loads((tmp_path / "out" / "img1_provenance.json").read_text())
    assert prov["parameters"]["tile"] == 96 and prov["parameters"]["chunk"] == 64
    assert main(args) == 0
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().err


def test_output_folder_inside_input_folder(tmp_path, model_file, fast_maps, capsys):
    save(tmp_path / "a.png", he_image(128, 128, 8))
    args = ["segment", str(tmp_path), "-o", str(tmp_path), "--model", str(model_file), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0  # a_labels.tif from the first run is not taken as an input
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().err
    assert not list(tmp_path.glob("a_labels_*"))


def test_params_are_parsed_and_checked(tmp_path, model_file, fast_maps, capsys):
    img = save(tmp_path / "a.png", he_image(128, 128, 3))
    base = ["segment", str(img), "-o", str(tmp_path / "out"), "--model", str(model_file), "--no-progress"]
    assert main(base + ["--param", "bogus=1"]) == 2
    assert "unknown AIS parameter 'bogus'" in capsys.readouterr().err
    assert main(base + ["--param", "min_size"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(base + ["--mode", "amg", "--param", "foreground_threshold=0.5"]) == 2
    assert "unknown AMG parameter" in capsys.readouterr().err
    assert main(base + ["--param", "foreground_threshold=-1"]) == 2
    assert "foreground_threshold" in capsys.readouterr().err
    assert main(base + ["--chunk", "0"]) == 2
    assert not (tmp_path / "out").exists()
    assert main(base + ["--param", "min_size=60", "--param", "context=64", "--param", "on_incomplete=warn"]) == 0
    prov = json.loads((tmp_path / "out" / "a_provenance.json").read_text())
    assert prov["parameters"]["ais"]["min_size"] == 60
    assert prov["parameters"]["engine"] == {"context": 64, "on_incomplete": "warn"}
    areas = np.bincount(read_labels(tmp_path / "out" / "a_labels.tif").ravel())[1:]
    assert areas.size > 0 and areas.min() >= 60


def test_same_stem_in_two_folders_is_refused(tmp_path, model_file, fast_maps, capsys):
    a = save(tmp_path / "a" / "x.png", he_image(128, 128, 4))
    b = save(tmp_path / "b" / "x.png", he_image(128, 128, 5))
    rc = main(["segment", str(a), str(b), "-o", str(tmp_path / "out"), "--model", str(model_file),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{b}: error: same output name as {a}" in err
    assert is_complete(a, tmp_path / "out")


def test_random_model_end_to_end(tmp_path, model_file, capsys):
    """The real network path (random weights): outputs exist and the provenance names the model file."""
    img = save(tmp_path / "r.png", he_image(160, 150, 6))
    rc = main(["segment", str(img), "-o", str(tmp_path / "out"), "--model", str(model_file), "--no-progress",
               "--precision", "fp32", "--mpp", "0.25"])
    assert rc == 0, capsys.readouterr().err
    prov = json.loads((tmp_path / "out" / "r_provenance.json").read_text())
    assert prov["model"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert prov["model"]["name"] == "nano-random" and prov["parameters"]["precision"] == "fp32"
    assert prov["parameters"]["resample_factor"] == 1.0
    labels = read_labels(tmp_path / "out" / "r_labels.tif")
    assert labels.shape == (160, 150) and labels.dtype == np.uint32
    assert is_complete(img, tmp_path / "out")


def test_amg_that_keeps_nothing_says_why(tmp_path, model_file, capsys):
    """AMG with a model whose predicted IoUs fall below SAM's thresholds keeps no mask: the run completes and
    a note names the thresholds and, for a model with an instance decoder, AIS."""
    img = save(tmp_path / "a.png", he_image(64, 64, 7))
    rc = main(["segment", str(img), "-o", str(tmp_path / "out"), "--model", str(model_file), "--no-progress",
               "--mode", "amg", "--param", "points_per_side=4", "--param", "pred_iou_thresh=1.0", "--mpp", "0.25"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "note: AMG kept no mask" in err and "AIS (the default --mode)" in err
    assert "0 nuclei" in err and is_complete(img, tmp_path / "out")


def test_bad_model_fails_once_with_one_line(tmp_path, capsys):
    img = save(tmp_path / "a.png", he_image(128, 128, 7))
    rc = main(["segment", str(img), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "Traceback" not in err
