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
