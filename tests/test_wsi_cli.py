"""``histosam slide`` command line."""

from __future__ import annotations

import json

import pytest

from histosam.cli.main import main
from histosam.wsi.synthetic import write_synthetic_slide

FAST = ["--fake-model", "--target-mpp", "0.5", "--tile", "256", "--halo", "32", "--chunk", "512",
        "--context", "64", "--no-progress"]


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("cli") / "s1.tif", 1536, 1536, mpp=0.5, levels=2)


def test_cli_slide_outputs_and_skip(slide, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["slide", str(slide), "-o", str(out), "--csv", *FAST]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"s1.geojson.gz", "s1.parquet", "s1.csv", "s1_overlay.png", "s1_tissue.png",
            "s1.provenance.json", "s1.chunks.sqlite"} <= names
    prov = json.loads((out / "s1.provenance.json").read_text())
    assert prov["model"] == "fake-colour-threshold" and prov["objects"] > 100
    assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().err
    assert main(["slide", str(slide), "-o", str(out), *FAST]) == 0
    assert "0 done, 1 skipped" in capsys.readouterr().err


def test_cli_errors(slide, tmp_path, capsys):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"xx")
    assert main(["slide", str(bad), str(slide), "-o", str(tmp_path / "o"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "bad.svs: error: cannot open slide" in err and "1 done, 0 skipped, 1 failed" in err
    assert main(["slide", str(slide), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert main(["slide", str(slide), "-o", str(tmp_path / "o"), "--roi", "1,2,x,4", *FAST]) == 2
    assert "ROI box" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["slide", str(slide), "-o", "x", "--workers", "2", "--scheduler", "tcp://h:1", *FAST])
