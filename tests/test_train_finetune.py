"""Finetuning from a PathoSAM/micro-sam-format checkpoint (random weights), exported back to both formats."""

from __future__ import annotations

import pytest
import torch
import yaml

import histosam
from histosam.models.build import build_model
from histosam.registry.formats import export_micro_sam
from testlib import write_nucleus_folder


@pytest.mark.parametrize("mode", ["mask_decoder", "decoders"])
def test_finetune_from_pathosam_format_and_export(tmp_path, mode):
    from histosam.cli.main import main

    torch.manual_seed(0)
    start = build_model("tiny", instance_decoder="unetr")
    ckpt = export_micro_sam(start, tmp_path / "pathosam_like.pt")  # {"model_state", "decoder_state"}
    cfg = tmp_path / "ft.yaml"
    data = write_nucleus_folder(tmp_path / "d")
    cfg.write_text(yaml.safe_dump({
        "model": "tiny", "checkpoint": str(ckpt), "finetune": mode, "data_dirs": [str(data)],
        "val_ids": ["im2"], "patch_size": 64, "n_objects": 3, "n_sub_iterations": 2, "batch_size": 1,
        "min_instances": 2, "lr": 1e-3, "val_whole_images": False}))
    out = tmp_path / "run"
    rc = main(["train", str(cfg), "--epochs", "1", "--iterations-per-epoch", "2", "--output-dir", str(out),
               "--device", "cpu", "--no-progress"])
    assert rc == 0
    tuned = histosam.load_model(out / "final.pt", device="cpu")  # histosam format
    assert tuned.config.architecture == "tiny" and tuned.instance_decoder is not None
    before = dict(start.mask_decoder.state_dict())
    after = tuned.mask_decoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the mask decoder was trained"
    enc_b, enc_a = start.image_encoder.state_dict(), tuned.image_encoder.state_dict()
    assert all(torch.equal(enc_b[k], enc_a[k]) for k in enc_b), "the encoder stays frozen in this mode"
    back = histosam.load_model(export_micro_sam(tuned, tmp_path / "exported.pt"), device="cpu")  # micro-sam format
    for k, v in tuned.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    from histosam.errors import CheckpointError
    from histosam.train.config import from_dict
    from histosam.train.loop import initial_model

    ckpt = export_micro_sam(build_model("tiny"), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="tiny"):
        initial_model(from_dict({"model": "vit_b", "checkpoint": str(ckpt)}))


def test_new_decoder_is_attached_when_the_checkpoint_has_none(tmp_path):
    from histosam.train.config import from_dict
    from histosam.train.loop import initial_model

    ckpt = export_micro_sam(build_model("tiny"), tmp_path / "sam_only.pt")
    model = initial_model(from_dict({"model": "tiny", "checkpoint": str(ckpt), "with_instance_decoder": True}))
    assert model.instance_decoder is not None and model.config.instance_decoder == "unetr"
