"""``histosam evaluate`` end to end on a tiny synthetic folder, and the report writers."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from PIL import Image

import histosam
from histosam.cli.main import main
from histosam.evaluation import report as R


def _folder(tmp_path, n=2):
    d = tmp_path / "data"
    d.mkdir()
    rr, cc = np.mgrid[:96, :96]
    for k in range(n):
        gt = np.zeros((96, 96), np.uint16)
        for j, (y, x) in enumerate([(20, 20), (20, 70), (70, 30 + 10 * k)], start=1):
            gt[(rr - y) ** 2 + (cc - x) ** 2 <= 81] = j
        img = np.empty((96, 96, 3), np.uint8)
        img[:] = (235, 200, 220)
        img[gt > 0] = (70, 50, 140)
        Image.fromarray(img).save(d / f"im{k}.png")
        tifffile.imwrite(d / f"im{k}_label.tif", gt)
    return d


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_baseline(tmp_path, capsys):
    data = _folder(tmp_path)
    out = tmp_path / "out"
    assert main(["evaluate", "--data", str(data), "--task", "baseline", "-o", str(out)]) == 0
    rows = _read_csv(out / "baseline.csv")
    assert [r["image"] for r in rows] == ["im0", "im1", "mean"]
    assert all(float(r["SA50"]) == 1.0 and r["n_gt"] in ("3", "3.0") for r in rows)
    assert float(rows[-1]["mSA"]) > 0.8
    text = (out / "report.md").read_text()
    assert "histosam evaluate" in text and "| im1 |" in text
    assert (out / "sa_per_threshold.png").stat().st_size > 1000
    assert "mSA=" in capsys.readouterr().out


def test_cli_split_and_errors(tmp_path, capsys):
    data = _folder(tmp_path, n=4)
    out = tmp_path / "out"
    args = ["evaluate", "--data", str(data), "--task", "baseline", "-o", str(out)]
    assert main(args + ["--split", "val", "--val-fraction", "0.25", "--seed", "1"]) == 0
    assert len(_read_csv(out / "baseline.csv")) == 2  # 1 image + mean
    assert main(args + ["--split", "val"]) == 2  # needs --val-fraction
    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--task", "baseline"]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_ais_defaults_to_the_embedded_model(tmp_path):
    """Like every other command, evaluate runs the embedded default model when --model is not given, and the
    report names it."""
    data = _folder(tmp_path, n=1)
    out = tmp_path / "ais"
    assert main(["evaluate", "--data", str(data), "--task", "ais", "-o", str(out)]) == 0
    assert len(_read_csv(out / "ais.csv")) == 2  # 1 image + mean
    assert "model histosam-nano;" in (out / "report.md").read_text()


def test_cli_interactive_with_fake_model(tmp_path, monkeypatch):
    from test_evaluation_protocols import FakePredictor

    # setitem on the module dict: never triggers the lazy import of the real modules
    monkeypatch.setitem(vars(histosam), "load_model", lambda name, **kw: object())
    monkeypatch.setitem(vars(histosam), "Predictor", lambda model, **kw: FakePredictor(radius=9))
    data = _folder(tmp_path)
    out = tmp_path / "it"
    base = ["evaluate", "--data", str(data), "--model", "fake", "-o", str(out)]
    assert main(base + ["--task", "iterative", "--n-iterations", "2"]) == 0
    rows = _read_csv(out / "iterative.csv")
    assert float(rows[0]["point"]) == 1.0 and float(rows[0]["box"]) < 1.0  # box of a disc ≠ disc
    assert {"I_P", "I_B"} <= set(rows[0]) and (out / "msa_per_iteration.png").exists()
    assert main(base + ["--task", "clicks", "--max-clicks", "3"]) == 0
    rows = _read_csv(out / "clicks.csv")
    assert float(rows[0]["NoC@90"]) == 1.0 and float(rows[0]["NoF@90"]) == 0.0
    assert (out / "iou_per_click.png").exists()


def test_report_tables_and_atomic(tmp_path):
    rows = [{"image": "a", "x": 1.0, "n": 2}, {"image": "b", "x": float("nan"), "n": 4, "y": 0.5}]
    m = R.mean_row(rows)
    assert m == {"image": "mean", "x": 1.0, "n": 3.0, "y": 0.5}
    md = R.to_markdown(rows, digits=2)
    assert md.splitlines()[0] == "| image | x | n | y |" and "| b | nan | 4 | 0.50 |" in md
    res = R.write_tables(rows, tmp_path, "t", md_columns=["image", "x"])
    assert _read_csv(res["csv"])[-1]["n"] == "3.0" and "y" not in res["md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]  # no temp file left behind
    with pytest.raises(TypeError):
        R.atomic_write_bytes(tmp_path / "u.bin", "not bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]  # failed write left nothing
