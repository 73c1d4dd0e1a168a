"""The CLI's error contract: a HistosamError is one line (exit 2), anything unexpected one line asking for a
report (exit 3) with the traceback only under --debug; predict says which pixel size it assumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import histosam.cli.info as info_mod
from histosam.cli.main import main, one_line
from histosam.errors import HistosamError

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "histosam" / "data" / "cmu1_small_region_crop.png"


def _raise(exc):
    def run(args):
        raise exc
    return run


def test_unexpected_error_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(info_mod, "run", _raise(RuntimeError("boom\n  second line")))
    assert main(["info"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["histosam info: unexpected error: RuntimeError: boom | second line (please report it; --debug "
                   "before the command shows the traceback)"]


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(info_mod, "run", _raise(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "info"])


def test_histosam_error_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(info_mod, "run", _raise(HistosamError("bad thing\nmore")))
    assert main(["info"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["histosam info: error: bad thing | more"]
    assert one_line(ValueError("")) == "ValueError"


def test_predict_says_which_pixel_size_it_assumed(tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["predict", str(EXAMPLE), "--point", "100,100", "-o", str(out)]) == 0
    assert "taken to be the model's 0.25 µm/px" in capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["mpp_source"] == "none"
    assert main(["predict", str(EXAMPLE), "--point", "100,100", "-o", str(out), "--mpp", "0.5"]) == 0
    assert "taken to be" not in capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["mpp_source"] == "given"


def test_user_triggerable_errors_are_histosam_errors():
    """Options a user passes through the API end in a HistosamError (one CLI line), not a bare ValueError."""
    import numpy as np

    from histosam.inference.runtime import resolve_precision
    from histosam.io.images import to_rgb_uint8
    from histosam.models.build import build_model

    for call in (lambda: resolve_precision("fp8", None), lambda: build_model("vit_x"),
                 lambda: build_model("nano", instance_decoder="unetr"),
                 lambda: to_rgb_uint8(np.zeros((2, 2, 3), np.uint8), stretch="log"),
                 lambda: build_model("tiny", instance_decoder="unetr").instance_decoder.set_bn_mode("x")):
        with pytest.raises(HistosamError):
            call()


def test_every_exception_class_lives_in_errors():
    """One module holds every exception and warning class (the others import them from there)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "src" / "histosam"
    strays = []
    for path in root.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception", "Warning"))
                    for b in node.bases):
                strays.append(f"{path.relative_to(root)}:{node.name}")
    assert strays == []


@pytest.mark.parametrize("command", ["segment", "predict", "evaluate", "slide"])
def test_shared_options_mean_the_same_everywhere(command, capsys):
    from histosam.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    opts = {s: a for a in sub._actions for s in a.option_strings}
    for name in ("--model", "--device", "--precision", "--allow-pickle", "--mpp"):
        assert name in opts, name
    assert opts["--precision"].choices == ("auto", "fp32", "bf16")
    for bad in ("-1", "nan", "0", "x"):
        with pytest.raises(SystemExit):
            sub.parse_args(["--mpp", bad])
        assert "--mpp" in capsys.readouterr().err


def test_docstring_examples_name_registered_models():
    """Every `--model NAME` in the command docstrings names a registered model (or a file)."""
    import re

    import histosam

    root = Path(__file__).resolve().parents[1] / "src" / "histosam" / "cli"
    names = set(histosam.list_models())
    for path in root.glob("*.py"):
        examples = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip().startswith("histosam ")]
        for name in re.findall(r"--model ([A-Za-z0-9_.\-/]+)", "\n".join(examples)):
            assert name in names or name.endswith((".pt", ".pth")) or name.isupper(), (path.name, name)
