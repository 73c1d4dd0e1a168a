"""Iterative correction from the command line and the server: several labelled clicks plus an earlier mask
(``histosam predict --mask-input``, the server's ``b64mask``), through ``Predictor.mask_prompt``."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from histosam.models.build import build_model


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    from histosam.registry.formats import save_histosam

    torch.manual_seed(0)
    return save_histosam(build_model("tiny", mask_decoder="refine", mask_decoder_options={"mlp_dim": 64}),
                         tmp_path_factory.mktemp("m") / "tiny_refine.pt")


def test_mask_prompt_frames_the_earlier_mask(tiny_file):
    import histosam
    from histosam.inference.predictor import Predictor

    pred = Predictor(histosam.load_model(tiny_file, device="cpu"), device="cpu", precision="fp32")
    pred.set_image(np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8))
    mask = np.zeros((120, 100), bool)
    mask[30:60, 20:50] = True
    logits, origin = pred.mask_prompt(mask, points=np.array([[35.0, 45.0]]))
    assert logits.shape == (1, 64, 64) and tuple(origin) == (0, 0)
    scale = 256 / 120  # resized to the 256-px frame, then 4 px per low-res cell
    inside = logits[0, int(45 * scale / 4), int(35 * scale / 4)]
    assert inside > 5 and logits[0, 2, 60] < -5 and logits[0, 63, 63] < -5  # padding is background
    out = pred.predict(points=np.array([[35.0, 45.0], [70.0, 100.0]]), labels=np.array([1, 0]),
                       mask_input=logits, mask_origin=origin)
    assert out.masks.shape == (1, 1, 120, 100)
    with pytest.raises(Exception, match="size"):
        pred.mask_prompt(mask[:50])


def test_predict_cli_accepts_clicks_and_an_earlier_mask(tmp_path, tiny_file):
    from histosam.cli.main import main

    img = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 110, 3), dtype=np.uint8)).save(img)
    first = tmp_path / "first.png"
    common = ["--model", str(tiny_file), "--device", "cpu", "--precision", "fp32"]
    assert main(["predict", str(img), "-o", str(first), "--point", "40,30", *common]) == 0
    earlier = np.zeros((90, 110), np.uint8)
    earlier[20:50, 30:60] = 255
    Image.fromarray(earlier).save(tmp_path / "earlier.png")
    second = tmp_path / "second.png"
    rc = main(["predict", str(img), "-o", str(second), "--point", "40,30", "--point", "80,70,0",
               "--mask-input", str(tmp_path / "earlier.png"), *common])
    assert rc == 0 and second.exists()
    report = json.loads(second.with_suffix(".json").read_text())
    assert report["prompts"]["labels"] == [1, 0] and report["prompts"]["mask_input"].endswith("earlier.png")
    # a background click alone is a correction when there is an earlier mask
    third = tmp_path / "third.png"
    assert main(["predict", str(img), "-o", str(third), "--point", "45,25,0", "--mask-input",
                 str(tmp_path / "earlier.png"), *common]) == 0
    wrong = np.zeros((40, 40), np.uint8)
    Image.fromarray(wrong).save(tmp_path / "wrong.png")
    assert main(["predict", str(img), "-o", str(third), "--point", "40,30", "--mask-input",
                 str(tmp_path / "wrong.png"), *common]) != 0


def test_server_decodes_b64mask():
    from histosam.errors import HistosamError
    from histosam.server.app import _prompt_mask
    from histosam.server.protocol import SAMBody

    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 8:20] = 1
    buf = io.BytesIO()
    Image.fromarray(mask * 255).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    body = SAMBody(b64img="x", point_coords=[(10.0, 7.0)], point_labels=[1], b64mask=b64)
    got = _prompt_mask(body, (20, 30))
    assert got.dtype == bool and np.array_equal(got, mask > 0)
    assert _prompt_mask(SAMBody(b64img="x"), (20, 30)) is None
    with pytest.raises(HistosamError, match="size"):
        _prompt_mask(body, (21, 30))
    with pytest.raises(HistosamError, match="b64mask"):
        _prompt_mask(SAMBody(b64img="x", b64mask=base64.b64encode(b"junk").decode()), (20, 30))
