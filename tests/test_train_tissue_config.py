"""`histosam train` with `task: tissue`: the YAML maps onto TissueTrainConfig; bad keys are one-line errors."""

from pathlib import Path

import pytest

from histosam.train.config import ConfigError
from histosam.train.tissue import split_by_patient, tissue_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "histosam-tissue.yaml"


def test_shipped_config_parses():
    import yaml

    cfg = tissue_config(yaml.safe_load(CONFIG.read_text()))
    assert cfg.second_encoder and cfg.encoder == "finetuned" and cfg.mpp == 1.24 and cfg.alpha == 0.125


@pytest.mark.parametrize("data, match", [({"task": "tissue", "colour": 1}, "unknown"),
                                         ({"lr": "fast"}, "lr"), ({"encoder": "thawed"}, "frozen"),
                                         ({"second_encoder": 1}, "second_encoder")])
def test_bad_keys(data, match):
    with pytest.raises(ConfigError, match=match):
        tissue_config(data)


def test_cli_reports_a_missing_data_folder(tmp_path, capsys):
    from histosam.cli.main import main

    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"task: tissue\ndata_dir: {tmp_path / 'nope'}\noutput_dir: {tmp_path / 'out'}\n")
    assert main(["train", str(cfg)]) != 0
    assert "not a folder" in capsys.readouterr().err


def test_split_holds_out_whole_patients():
    import numpy as np

    from histosam.train.tissue import GlandImage

    z = np.zeros((2, 2, 3), np.uint8)
    images = [GlandImage(f"i{k}", z, z[..., 0].astype(np.int32), "benign" if k % 2 else "malignant", f"p{k // 3}")
              for k in range(12)]
    train, val = split_by_patient(images, 0.25, seed=0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 12
    patient = {im.name: im.patient for im in images}
    assert {patient[n] for n in val}.isdisjoint({patient[n] for n in train})
    grades = {im.name: im.grade for im in images}
    assert {grades[n] for n in val} == {"benign", "malignant"}


def _gland_folder(root):
    import numpy as np
    import tifffile
    from PIL import Image

    root.mkdir()
    (root / "grade.csv").write_text("name,patient_id,grade_glas\ng0,1,benign\ng1,2,malignant\ng2,3,benign\n")
    rng = np.random.default_rng(0)
    for k in range(3):
        img = np.full((80, 80, 3), 225, np.uint8)
        lab = np.zeros((80, 80), np.uint16)
        lab[10:40, 10:40] = 1
        lab[45:75, 30:70] = 2
        img[lab > 0] = (120, 60, 140)
        img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"g{k}.png")
        tifffile.imwrite(root / f"g{k}_label.tif", lab)
    return root


def test_training_runs_and_resumes(tmp_path):
    from histosam.train.tissue import TissueTrainConfig, model_from_state, train_tissue

    data = _gland_folder(tmp_path / "glands")
    cfg = TissueTrainConfig(data_dir=str(data), output_dir=str(tmp_path / "run"), init="scratch", frame=64,
                            batch_size=2, iterations=2, val_every=1, data_mpp=1.0, mpp=1.0, val_fraction=0.3)
    first = train_tissue(cfg, log=lambda m: None)
    assert first["step"] == 2 and (tmp_path / "run" / "best.pt").is_file()
    logs = []
    again = train_tissue(cfg, log=logs.append)  # nothing left to do: resumes at step 2 and stops
    assert again["step"] == 2 and any("resumed at step 2" in m for m in logs)
    model = model_from_state(tmp_path / "run" / "latest.pt")
    assert model.tissue_decoder is not None and model.config.mpp == 1.0
