"""``histosam --help``, ``info``, ``models`` and ``predict``, run in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import histosam
from histosam.cli.main import COMMANDS, main
from histosam.models.build import build_model
from histosam.registry import formats
from histosam.registry.entries import REGISTRY


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"    {name}" in out, name
    assert "unavailable" not in out


def test_python_dash_m_runs_the_same_command_line():
    """``python -m histosam`` is the ``histosam`` script (for environments where scripts are not on PATH)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "histosam", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"histosam {histosam.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- info

def test_info_json(capsys, tmp_path, monkeypatch):
    from histosam.inference import runtime

    monkeypatch.setenv("HISTOSAM_MODEL_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__ and info["numpy"] == np.__version__
    assert info["histosam"] == histosam.__version__
    assert info["cuda_available"] == torch.cuda.is_available()
    assert info["cpu_features"] == {"amx_bf16": True, "avx512_bf16": False, "avx512f": False, "avx2": True}
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["model_cache_dir"] == str(tmp_path / "cache") and info["model_cache_exists"] is False
    assert info["embedded_model_file"].endswith("weights/histosam-nano.pt")
    # CPU with AMX-BF16: 'auto' picks bf16 (on CUDA too)
    assert info["default_precision"] == "bf16"


def test_info_text(capsys, monkeypatch):
    from histosam.inference import runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch           {torch.__version__}" in out
    assert "CUDA available  no" in out and "GPU             none" in out
    assert "  AMX-BF16 (fast bf16 matrix units)" in out
    assert all(line.endswith(" no") for line in out.splitlines() if line.startswith("  A"))
    assert "precision       fp32" in out
    assert "model cache" in out and "default model   histosam-nano" in out


# ---------------------------------------------------------------------------------------------- models

def test_models_table_and_json(capsys, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HISTOSAM_MODEL_DIR", str(cache))
    (cache / REGISTRY["vit_b"].filename).write_bytes(b"x")
    (cache / REGISTRY["vit_b_histopathology"].filename).write_bytes(b"x")  # decoder file still missing
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(REGISTRY)
    assert rows["vit_b"]["cached"] and rows["vit_b"]["paths"] == [str(cache / "sam_vit_b_01ec64.pth")]
    assert rows["vit_b"]["ais_decoder"] is False and rows["vit_b"]["licence"] == "Apache-2.0"
    assert rows["vit_b"]["url"] == REGISTRY["vit_b"].url
    assert not rows["vit_b_histopathology"]["cached"] and rows["vit_b_histopathology"]["ais_decoder"]
    assert len(rows["vit_b_histopathology"]["paths"]) == 2
    assert not rows["vit_l"]["cached"]
    assert rows["histosam-nano"]["default"] and rows["histosam-nano"]["packaged"]

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ARCH", "AIS", "CACHED", "LICENCE"]
    vit_b = next(line for line in lines if line.startswith("vit_b "))
    assert vit_b.split()[:4] == ["vit_b", "vit_b", "no", "yes"]
    vit_l = next(line for line in lines if line.startswith("vit_l "))
    assert vit_l.split()[:4] == ["vit_l", "vit_l", "no", "no"]
    assert f"cached at {cache / 'sam_vit_b_01ec64.pth'}" in out
    assert f"not cached; goes to {cache / 'sam_vit_l_0b3195.pth'}" in out
    assert REGISTRY["vit_l"].url in out


# ---------------------------------------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tiny")
    return formats.save_histosam(model, tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(0)
    img = np.full((96, 128, 3), 230, dtype=np.uint8)
    img[30:60, 40:80] = (120, 40, 150)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "cells.png"
    Image.fromarray(img).save(path)
    return path


def _direct(model_path, image_path, **prompts):
    from histosam.io.images import read_image

    pred = histosam.Predictor(histosam.load_model(model_path, device="cpu"), device="cpu", precision="fp32")
    pred.set_image(read_image(image_path))
    return pred.predict(**prompts)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_predict_point_and_box(tmp_path, capsys, tiny_model_path, image_path, suffix):
    from histosam.io.images import read_image

    out = tmp_path / f"mask{suffix}"
    args = ["predict", str(image_path), "-o", str(out), "--model", str(tiny_model_path), "--device", "cpu",
            "--precision", "fp32", "--point", "60,45", "--point", "10,10,0", "--box", "35,25,85,65", "--multimask"]
    assert main(args) == 0
    assert "predicted IoU" in capsys.readouterr().out
    ref = _direct(tiny_model_path, image_path, points=np.array([[60, 45], [10, 10]], np.float32),
                  labels=np.array([1, 0]), box=np.array([35, 25, 85, 65], np.float32), multimask=True)
    best = int(np.argmax(ref.scores[0]))
    expected = ref.masks[0, best]
    if suffix == ".png":
        from PIL import Image

        written = np.asarray(Image.open(out))
        assert written.dtype == np.uint8 and set(np.unique(written)) <= {0, 255}
        np.testing.assert_array_equal(written == 255, expected)
    else:
        from histosam.io.labels import read_labels

        written = read_labels(out)
        assert written.dtype == np.uint32
        np.testing.assert_array_equal(written, expected.astype(np.uint32))
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["scores"] == pytest.approx(ref.scores[0].tolist(), abs=1e-6)
    assert len(report["scores"]) == 3 and report["best"] == best
    assert report["prompts"] == {"points": [[60.0, 45.0], [10.0, 10.0]], "labels": [1, 0],
                                 "box": [35.0, 25.0, 85.0, 65.0], "mask_input": None}
    assert report["area_px"] == int(expected.sum())
    assert report["image_size"] == {"height": 96, "width": 128}
    assert report["model"] == "tiny" and report["precision"] == "fp32"
    assert read_image(image_path).shape == (96, 128, 3)


def test_predict_resamples_to_the_model_resolution(tmp_path, image_path):
    """With the embedded model (0.25 µm/px) a 0.5 µm/px image is resampled: given by --mpp or by the TIFF's own
    resolution tags, with the same result; the mask stays in the image's pixels; --mpp wins over the file."""
    import tifffile

    from histosam.io.images import read_image
    from histosam.io.labels import read_labels

    image = read_image(image_path)
    tagged = tmp_path / "tagged.tif"
    tifffile.imwrite(tagged, image, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    common = ["--device", "cpu", "--precision", "fp32", "--point", "60,45"]
    reports = {}
    for name, source, extra in (("given", image_path, ["--mpp", "0.5"]), ("file", tagged, []),
                                ("override", tagged, ["--mpp", "0.25"])):
        assert main(["predict", str(source), "-o", str(tmp_path / f"{name}.tif"), *common, *extra]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert (reports["given"]["mpp"], reports["given"]["resample_factor"]) == (0.5, 2.0)
    assert (reports["file"]["mpp"], reports["file"]["resample_factor"]) == (pytest.approx(0.5), 2.0)
    assert (reports["override"]["mpp"], reports["override"]["resample_factor"]) == (0.25, 1.0)
    given, from_file = read_labels(tmp_path / "given.tif"), read_labels(tmp_path / "file.tif")
    assert given.shape == image.shape[:2] and given.any()
    np.testing.assert_array_equal(given, from_file)
    with pytest.raises(SystemExit) as stop:  # argparse's usage error: exit 2, one line naming --mpp
        main(["predict", str(image_path), "-o", str(tmp_path / "bad.png"), *common, "--mpp", "0"])
    assert stop.value.code == 2


def test_predict_single_point(tmp_path, tiny_model_path, image_path):
    out = tmp_path / "one.png"
    assert main(["predict", str(image_path), "-o", str(out), "--model", str(tiny_model_path), "--device", "cpu",
                 "--precision", "fp32", "--point", "60,45"]) == 0
    report = json.loads((tmp_path / "one.json").read_text())
    assert len(report["scores"]) == 1 and report["best"] == 0
    ref = _direct(tiny_model_path, image_path, points=np.array([[60, 45]], np.float32))
    assert report["best_score"] == pytest.approx(float(ref.scores[0, 0]), abs=1e-6)


@pytest.mark.parametrize("extra,message", [
    ([], "give at least one prompt"),
    (["--point", "500,10"], "outside the 128×96 image"),
    (["--point", "10,10,0"], "only background points"),
    (["--box", "200,200,300,300"], "does not overlap"),
])
def test_predict_bad_prompts(tmp_path, capsys, tiny_model_path, image_path, extra, message):
    out = tmp_path / "m.png"
    code = main(["predict", str(image_path), "-o", str(out), "--model", str(tiny_model_path), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("histosam predict: error:") and message in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value,option", [("1,2,3,4,5", "--point"), ("a,b", "--point"), ("1,2,5", "--point"),
                                          ("5,5,1,1", "--box"), ("1,2,3", "--box")])
def test_predict_bad_prompt_syntax(capsys, image_path, value, option):
    with pytest.raises(SystemExit) as info:
        main(["predict", str(image_path), "-o", "x.png", option, value])
    assert info.value.code == 2
    assert option in capsys.readouterr().err


def test_predict_bad_files(tmp_path, capsys, tiny_model_path, image_path):
    assert main(["predict", str(image_path), "-o", str(tmp_path / "m.jpg"), "--point", "1,1"]) == 2
    assert "output must end in" in capsys.readouterr().err
    assert main(["predict", str(image_path), "-o", str(tmp_path / "no" / "m.png"), "--point", "1,1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["predict", str(tmp_path / "bad.png"), "-o", str(tmp_path / "m.png"), "--point", "1,1"]) == 2
    assert "cannot be read as an image" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 32)
    assert main(["predict", str(image_path), "-o", str(tmp_path / "m.png"), "--point", "1,1",
                 "--model", str(tmp_path / "bad.pt")]) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()
