"""Training configs: every key is checked for type and range; each error is one line naming the key."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from histosam.train.config import RANGES, ConfigError, TrainConfig, from_dict, load_config

# (YAML text, the key the error must name)
MALFORMED = [
    ("epochs: 1.5", "epochs"),
    ("epochs: '10'", "epochs"),
    ("epochs: ten", "epochs"),
    ("epochs: null", "epochs"),
    ("epochs: 0", "epochs"),
    ("epochs: true", "epochs"),
    ("epochs: [1]", "epochs"),
    ("epochs: .inf", "epochs"),
    ("augment: 'no'", "augment"),
    ("augment: 'yes'", "augment"),
    ("augment: 1", "augment"),
    ("augment: null", "augment"),
    ("resume: 'false'", "resume"),
    ("amp: 0", "amp"),
    ("min_size: -5", "min_size"),
    ("min_instances: -1", "min_instances"),
    ("lr: 0", "lr"),
    ("lr: -1e-5", "lr"),
    ("lr: '-1e-5'", "lr"),
    ("lr: fast", "lr"),
    ("lr: null", "lr"),
    ("lr: [1e-5]", "lr"),
    ("lr: {value: 1}", "lr"),
    ("lr: .nan", "lr"),
    ("lr: 'inf'", "lr"),
    ("lr: true", "lr"),
    ("weight_decay: -0.01", "weight_decay"),
    ("box_distortion: -0.1", "box_distortion"),
    ("grad_clip: 0", "grad_clip"),
    ("grad_clip: -1", "grad_clip"),
    ("grad_clip: clip", "grad_clip"),
    ("patch_size: 100", "patch_size"),
    ("patch_size: 0", "patch_size"),
    ("patch_size: 8", "patch_size"),
    ("patch_size: 512.5", "patch_size"),
    ("batch_size: 0", "batch_size"),
    ("n_objects: -3", "n_objects"),
    ("n_sub_iterations: 0", "n_sub_iterations"),
    ("mask_prob: 1.5", "mask_prob"),
    ("mask_prob: -0.1", "mask_prob"),
    ("val_fraction: 1.0", "val_fraction"),
    ("scale_range: 1.0", "scale_range"),
    ("scale_range: [1.2, 0.8]", "scale_range"),
    ("scale_range: [0.8]", "scale_range"),
    ("scale_range: [0, 1]", "scale_range"),
    ("scale_range: [a, b]", "scale_range"),
    ("scale_range: '0.8, 1.25'", "scale_range"),
    ("hed_jitter: -0.05", "hed_jitter"),
    ("brightness: 2", "brightness"),
    ("contrast: 1.0", "contrast"),
    ("scheduler_factor: 1.0", "scheduler_factor"),
    ("scheduler_factor: 0", "scheduler_factor"),
    ("scheduler_patience: -1", "scheduler_patience"),
    ("iterations_per_epoch: 0", "iterations_per_epoch"),
    ("max_minutes: 0", "max_minutes"),
    ("max_minutes: soon", "max_minutes"),
    ("sam_images: 0", "sam_images"),
    ("sam_every: 0", "sam_every"),
    ("sam_loss_resolution: medium", "sam_loss_resolution"),
    ("finetune: everything", "finetune"),
    ("finetune: null", "finetune"),
    ("seed: -1", "seed"),
    ("seed: 1.5", "seed"),
    ("num_workers: -2", "num_workers"),
    ("val_max_images: 0", "val_max_images"),
    ("device: gpu", "device"),
    ("device: cuda:x", "device"),
    ("device: 0", "device"),
    ("device: ''", "device"),
    ("device: CUDA", "device"),
    ("device: \"cpu\\n\"", "device"),
    ("model: vit_z", "model"),
    ("model: 3", "model"),
    ("model: [vit_b]", "model"),
    ("checkpoint: 42", "checkpoint"),
    ("checkpoint: ''", "checkpoint"),
    ("output_dir: null", "output_dir"),
    ("output_dir: ''", "output_dir"),
    ("output_dir: [a, b]", "output_dir"),
    ("data_dirs: 5", "data_dirs"),
    ("data_dirs: {a: 1}", "data_dirs"),
    ("data_dirs: [a, 5]", "data_dirs"),
    ("data_dirs: [a, null]", "data_dirs"),
    ("data_dirs: ['']", "data_dirs"),
    ("data_dirs: null", "data_dirs"),
    ("val_ids: [true]", "val_ids"),
    ("val_ids: [[a]]", "val_ids"),
    ("val_ids: 3", "val_ids"),
    ("with_instance_decoder: 'true'", "with_instance_decoder"),
    ("joint_step: on_cpu", "joint_step"),
    ("pad_to_frame: 1", "pad_to_frame"),
    ("lrr: 1e-5", "lrr"),
    ("learning_rate: 0.1\nepochs: 3", "learning_rate"),
    ("lr: 1e-3\nlr: 1e-4", "lr"),  # a duplicate key (PyYAML would keep the last silently)
]


def _one_line_naming(exc: pytest.ExceptionInfo, key: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert key in msg, msg
    assert "Traceback" not in msg
    return msg


def test_corpus_is_large():
    assert len(MALFORMED) >= 40 and len({k for _, k in MALFORMED}) >= 30


@pytest.mark.parametrize(("text", "key"), MALFORMED, ids=[t.replace("\n", "; ") for t, _ in MALFORMED])
def test_malformed_config(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = _one_line_naming(exc, key)
    assert str(path) in msg


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrainConfig)])
def test_every_field_is_type_checked(name):
    """Derived from the annotations: a mapping is wrong for every key; null only where the type is Optional."""
    with pytest.raises(ConfigError) as exc:
        from_dict({name: {"x": 1}})
    _one_line_naming(exc, name)
    hint = typing.get_type_hints(TrainConfig)[name]
    if type(None) in typing.get_args(hint):
        assert getattr(from_dict({name: None}), name) is None
    else:
        with pytest.raises(ConfigError, match=f"'{name}'.*null"):
            from_dict({name: None})


def test_defaults_are_valid_and_ranges_name_real_fields():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(RANGES) <= names
    cfg = TrainConfig().validate()
    assert cfg == TrainConfig()


@pytest.mark.parametrize(("text", "field", "value"), [
    ("lr: 1e-5", "lr", 1e-5),  # PyYAML 1.1 reads this as the string '1e-5'
    ("lr: '3e-4'", "lr", 3e-4),
    ("lr: 1.0e-5", "lr", 1e-5),
    ("lr: 1", "lr", 1.0),
    ("weight_decay: 0", "weight_decay", 0.0),
    ("max_minutes: 5e1", "max_minutes", 50.0),
    ("epochs: 2.0", "epochs", 2),
    ("epochs: 1_000", "epochs", 1000),
    ("augment: false", "augment", False),
    ("augment: yes", "augment", True),  # YAML 1.1's unquoted yes is the boolean true
    ("data_dirs: some/folder", "data_dirs", ["some/folder"]),
    ("data_dirs: [a, b]", "data_dirs", ["a", "b"]),
    ("val_ids: im1", "val_ids", ["im1"]),
    ("val_ids: [7, im2]", "val_ids", ["7", "im2"]),
    ("scale_range: [1, '1.5']", "scale_range", [1.0, 1.5]),
    ("grad_clip: null", "grad_clip", None),
    ("max_minutes: ~", "max_minutes", None),
    ("sam_images: 2", "sam_images", 2),
    ("device: cuda:1", "device", "cuda:1"),
    ("device: mps", "device", "mps"),
    ("device: cuda", "device", "cuda"),
    ("patch_size: 256", "patch_size", 256),
    ("min_size: 0", "min_size", 0),
    ("model: ''\ncheckpoint: some.pt", "model", ""),
])
def test_accepted(tmp_path, text, field, value):
    path = tmp_path / "ok.yaml"
    path.write_text(text + "\n")
    got = getattr(load_config(path), field)
    assert got == value and type(got) is type(value), (got, value)
    if isinstance(value, float):
        assert type(got) is float


def test_types_after_conversion():
    cfg = from_dict({"lr": "1e-5", "epochs": 3.0, "scale_range": (1, 2), "output_dir": Path("x"),
                     "data_dirs": [Path("d")]})
    assert type(cfg.lr) is float and cfg.lr == 1e-5 and type(cfg.epochs) is int
    assert cfg.scale_range == [1.0, 2.0] and cfg.output_dir == "x" and cfg.data_dirs == ["d"]
    assert all(type(v) is not float or math.isfinite(v) for v in cfg.to_dict().values())


@pytest.mark.parametrize("text", ["", "\n", "# nothing yet\n", "---\n"])
def test_empty_file_gives_defaults(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert load_config(path) == TrainConfig()


@pytest.mark.parametrize(("content", "words"), [
    (lambda: bytes(range(256)) * 4, "text"),
    (lambda: b"lr: 1e-5\x00\x00\x01", "NUL"),
    (lambda: b"- a\n- b\n", "mapping"),
    (lambda: b"just a string\n", "mapping"),
    (lambda: b"42\n", "mapping"),
    (lambda: b"lr: [1\n", "YAML"),
    (lambda: b"a: b: c\n", "YAML"),
    (lambda: b"lr: 1\n  epochs: 2\n", "YAML"),
    (lambda: b"\tlr: 1\n", "YAML"),
    (lambda: b"? [a, b]\n: 1\n", "unhashable"),
    (lambda: b"{[a]: 1}\n", "YAML"),
    (lambda: b"1: 2\n", "unknown"),
    (lambda: b"lr: &a [*a]\n", "lr"),  # a self-referencing list
])
def test_malformed_files(tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content())
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = _one_line_naming(exc, words)
    assert str(path) in msg


def test_missing_and_folder(tmp_path):
    for p in (tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(ConfigError) as exc:
            load_config(p)
        _one_line_naming(exc, str(p))


def test_cli_overrides_are_checked_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, {"patch_size": 100})
    _one_line_naming(exc, "patch_size")
    assert load_config(path, {"epochs": 3}).epochs == 3


# ------------------------------------------------------------------------------------------ through the CLI
def _run_cli(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "histosam", "train", str(cfg)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


@pytest.mark.parametrize(("text", "key"), [
    ("output_dir: out\ndata_dirs: [d]\nlr: fast\n", "lr"),
    ("output_dir: out\ndata_dirs: [d]\nepochs: 1.5\n", "epochs"),
    ("output_dir: out\ndata_dirs: [d]\naugment: 'no'\n", "augment"),
    ("output_dir: out\n", "data_dirs"),  # valid config (defaults) but nothing to train on
    ("output_dir: out\ndata_dirs: [does/not/exist]\n", "data_dirs"),
    ("", "data_dirs"),  # an empty file: the defaults, output_dir runs/histosam
])
def test_cli_one_line_error_and_no_output_folder(tmp_path, text, key):
    (tmp_path / "d").mkdir()
    done = _run_cli(tmp_path, text)
    assert done.returncode != 0
    err = done.stderr.strip()
    assert "Traceback" not in done.stderr and len(err.splitlines()) == 1, done.stderr
    assert err.startswith("histosam train: error:") and key in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    assert done.stdout == ""


def test_cli_binary_garbage(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(bytes(range(128, 256)) * 8)
    from histosam.cli.main import main

    assert main(["train", str(cfg)]) == 2
    assert not (tmp_path / "runs").exists()
