"""``histosam train``: flags generated from the config, flags override YAML, end-to-end tiny run."""

import argparse
import json
import pathlib

import pytest
import yaml

from histosam.cli import train as cli_train
from histosam.train.config import ConfigError, from_dict, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli_train.add_parser(sub)
    return parser.parse_args(["train", *argv])


def test_flags_override_yaml(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": "tiny", "lr": 0.1, "data_dirs": ["x"], "amp": True,
                                        "max_minutes": 5}))
    args = parse([str(cfg_file), "--lr", "0.5", "--val-ids", "a", "b", "--no-amp", "--max-minutes", "none",
                  "--patch-size", "128"])
    ov = cli_train.overrides_from_args(args)
    assert ov == {"lr": 0.5, "val_ids": ["a", "b"], "amp": False, "patch_size": 128}  # none -> not given
    cfg = load_config(cfg_file, ov)
    assert cfg.lr == 0.5 and cfg.val_ids == ["a", "b"] and cfg.amp is False and cfg.max_minutes == 5
    assert cfg.patch_size == 128 and cfg.model == "tiny"


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown"):
        from_dict({"lrr": 1})
    with pytest.raises(ConfigError, match="finetune"):
        from_dict({"finetune": "everything"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_are_valid():
    import yaml

    from histosam.train.tissue import tissue_config

    for p in sorted((ROOT / "configs").glob("*.yaml")):
        if yaml.safe_load(p.read_text()).get("task") == "tissue":  # a region model's recipe
            tcfg = tissue_config(yaml.safe_load(p.read_text()))
            assert tcfg.data_dir and tcfg.frame in (256, 512), p
            continue
        cfg = load_config(p)
        assert cfg.data_dirs and cfg.patch_size in (256, 512), p


def test_cli_end_to_end_tiny(tmp_path, capsys):
    pytest.importorskip("histosam.models.build")
    from histosam.cli.main import main
    from testlib import write_nucleus_folder

    data = write_nucleus_folder(tmp_path / "data")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": "tiny", "data_dirs": [str(data)], "val_ids": ["im2"],
                                   "patch_size": 64, "n_objects": 3, "n_sub_iterations": 2, "batch_size": 1,
                                   "with_instance_decoder": False, "min_instances": 2}))
    out = tmp_path / "run"
    rc = main(["train", str(cfg), "--epochs", "1", "--iterations-per-epoch", "2", "--output-dir", str(out),
               "--device", "cpu", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs_done"] == 1 and summary["step"] == 2 and "val_loss" in summary["last"]
    assert (out / "final.pt").exists() and (out / "latest.pt").exists()
    rc = main(["train", str(cfg), "--val-ids", "nope", "--output-dir", str(out)])
    assert rc == 2
