"""Checkpoint integrity: histosam's files carry a weights checksum checked on load; the shipped model's sha256 is
checked on every load; `histosam models --verify` checks every present file."""

from __future__ import annotations

import shutil

import pytest
import torch

from histosam.errors import CheckpointError
from histosam.registry.download import file_hash
from histosam.registry.entries import REGISTRY
from histosam.registry.formats import read_checkpoint, save_histosam, split_checkpoint, state_sha256
from histosam.registry.loader import PACKAGE_ROOT, load_model


def _flip_data_bytes(path, n=20):
    """Flip ``n`` bytes inside the largest tensor's data (found by its position in the zip archive)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(path.read_bytes())
    for k in range(n):
        data[start + 64 + 997 * k] ^= 0xFF
    path.write_bytes(bytes(data))


def test_packaged_model_hash_matches_the_registry():
    entry = REGISTRY["histosam-nano"]
    algo, _, digest = entry.hash.partition(":")
    assert file_hash(PACKAGE_ROOT / entry.packaged, algo) == digest
    obj = read_checkpoint(PACKAGE_ROOT / entry.packaged)
    assert obj["version"] == 2 and set(obj["roles"]) == {"encoder", "masks", "instances"}
    assert obj["weights_sha256"] == {r: state_sha256(st) for r, st in obj["roles"].items()}


def test_flipped_bytes_in_histosam_file_are_caught(tmp_path):
    from histosam.models.build import build_model

    torch.manual_seed(0)
    path = save_histosam(build_model("nano"), tmp_path / "m.pt")
    load_model(path, device="cpu")  # intact: loads
    _flip_data_bytes(path)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        split_checkpoint(read_checkpoint(path), str(path))
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(path, device="cpu")


def test_flipped_bytes_in_packaged_model_are_caught(tmp_path, monkeypatch):
    import histosam.registry.loader as loader

    root = tmp_path / "pkg"
    (root / "weights").mkdir(parents=True)
    copy = root / REGISTRY["histosam-nano"].packaged
    shutil.copy(PACKAGE_ROOT / REGISTRY["histosam-nano"].packaged, copy)
    monkeypatch.setattr(loader, "PACKAGE_ROOT", root)
    load_model("histosam-nano", device="cpu")
    _flip_data_bytes(copy)
    with pytest.raises(CheckpointError, match="packaged model histosam-nano .* does not match its published sha256"):
        load_model("histosam-nano", device="cpu")


def test_models_verify_cli(tmp_path, monkeypatch, capsys):
    import histosam.registry.loader as loader
    from histosam.cli.main import main

    monkeypatch.setenv("HISTOSAM_MODEL_DIR", str(tmp_path / "cache"))
    assert main(["models", "--verify"]) == 0
    assert "histosam-nano" in capsys.readouterr().out
    root = tmp_path / "pkg"
    (root / "weights").mkdir(parents=True)
    copy = root / REGISTRY["histosam-nano"].packaged
    shutil.copy(PACKAGE_ROOT / REGISTRY["histosam-nano"].packaged, copy)
    _flip_data_bytes(copy, 1)
    monkeypatch.setattr(loader, "PACKAGE_ROOT", root)
    assert main(["models", "--verify"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
