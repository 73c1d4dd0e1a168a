"""Training loop: smoke (loss falls), reproducibility, resume, time budget, finetuning modes."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("histosam.models.build")

from histosam.models.build import build_model  # noqa: E402
from histosam.models.heads import AIS_CHANNELS, HeadContract  # noqa: E402
from histosam.train.checkpoint import load_train_state  # noqa: E402
from histosam.train.config import TrainConfig  # noqa: E402
from histosam.train.data import PatchDataset  # noqa: E402
from histosam.train.loop import Trainer, set_trainable  # noqa: E402


def synthetic(n=3, size=64, seed=0):
    rng = np.random.default_rng(seed)
    imgs, labs = [], []
    for _ in range(n):
        lab = np.zeros((size, size), np.uint32)
        rr, cc = np.ogrid[:size, :size]
        for i in range(1, 9):
            r, c = rng.integers(6, size - 6, 2)
            lab[(rr - r) ** 2 + (cc - c) ** 2 <= 20] = i
        img = np.full((size, size, 3), 225, np.uint8)
        img[lab > 0] = (90, 40, 140)
        imgs.append(img)
        labs.append(lab)
    return imgs, labs


class SmallHead(torch.nn.Module):
    """Cheap stand-in for the UNETR (same contract: embedding -> B×3×S×S sigmoid maps)."""

    contract = HeadContract("instances", ("embedding",), AIS_CHANNELS)

    def __init__(self, stride=16):
        super().__init__()
        self.conv = torch.nn.Conv2d(256, 3, 1)
        self.stride = stride

    def forward(self, emb):
        return torch.sigmoid(torch.nn.functional.interpolate(self.conv(emb), scale_factor=self.stride,
                                                             mode="bilinear"))


def make(tmp_path, seed=0, **kw):
    opts = dict(model="tiny", patch_size=64, batch_size=2, n_objects=4, n_sub_iterations=2, lr=1e-3,
                epochs=2, iterations_per_epoch=3, output_dir=str(tmp_path), seed=seed, min_instances=2,
                augment=False, device="cpu")
    opts.update(kw)
    cfg = TrainConfig(**opts).validate()
    torch.manual_seed(cfg.seed)
    model = build_model("tiny", instance_decoder="unetr")
    model.instance_decoder = SmallHead()  # the real UNETR at 256² takes ~10 s per step on 1 CPU core
    imgs, labs = synthetic()
    tr = PatchDataset(imgs, labs, 64, cfg.iterations_per_epoch * cfg.batch_size, cfg.seed, min_instances=2,
                      augment=False)
    va = PatchDataset(imgs[:1], labs[:1], 64, 1, random=False, augment=False)
    return Trainer(cfg, model, tr, va)


def test_set_trainable_modes():
    m = build_model("tiny", instance_decoder="unetr")
    n = {mode: len(set_trainable(m, mode)) for mode in ("mask_decoder", "encoder_and_mask_decoder", "all",
                                                         "decoders")}
    md = len(list(m.mask_decoder.parameters()))
    enc = len(list(m.image_encoder.parameters()))
    dec = len(list(m.instance_decoder.parameters()))
    assert n["mask_decoder"] == md and n["encoder_and_mask_decoder"] == md + enc
    assert n["decoders"] == md + dec and n["all"] == len(list(m.parameters()))


def test_loss_falls_on_fixed_batch(tmp_path):
    torch.set_num_threads(1)
    tr = make(tmp_path)
    images, inst, targets = next(iter(torch.utils.data.DataLoader(tr.train_ds, batch_size=2)))
    first = None
    for _ in range(8):
        rng = np.random.default_rng(0)
        tr.step = 0  # same prompt kind each time
        out = tr.train_step(images, inst, targets, rng)
        first = first or out
    assert out["sam_loss"] < first["sam_loss"] - 0.05
    assert out["decoder_loss"] < first["decoder_loss"] - 0.05


def test_fit_reproducible_resume_and_files(tmp_path):
    torch.set_num_threads(1)
    a = make(tmp_path / "a").fit(progress=False)
    b = make(tmp_path / "b").fit(progress=False)
    assert a["history"][0]["sam_loss"] == b["history"][0]["sam_loss"]
    assert a["history"][0]["decoder_loss"] == b["history"][0]["decoder_loss"]
    assert "val_loss" in a["history"][0]
    for name in ("latest.pt", "final.pt", "best.pt", "metrics.jsonl"):
        assert (tmp_path / "a" / name).exists()
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    final = torch.load(tmp_path / "a" / "final.pt", weights_only=True)
    assert final["format"] == "histosam" and final["version"] == 2
    assert set(final["roles"]) == {"encoder", "masks", "instances"}
    # resume: run 1 epoch, then continue to 2 -> same as uninterrupted
    c1 = make(tmp_path / "c", epochs=1).fit(progress=False)
    assert c1["epochs_done"] == 1 and load_train_state(tmp_path / "c" / "latest.pt")["epoch"] == 1
    c2 = make(tmp_path / "c", epochs=2).fit(progress=False)
    assert c2["epochs_done"] == 2 and len(c2["history"]) == 1
    assert c2["history"][0]["sam_loss"] == pytest.approx(a["history"][1]["sam_loss"], rel=1e-5)


def test_time_budget_stops_and_saves(tmp_path):
    torch.set_num_threads(1)
    res = make(tmp_path, epochs=50, max_minutes=1e-4).fit(progress=False)
    assert res["stopped_early"] and res["epochs_done"] == 0 and res["step"] == 1
    assert (tmp_path / "latest.pt").exists() and (tmp_path / "final.pt").exists()


def test_frozen_encoder_unchanged(tmp_path):
    torch.set_num_threads(1)
    tr = make(tmp_path, finetune="decoders")
    before = {k: v.clone() for k, v in tr.model.image_encoder.state_dict().items()}
    images, inst, targets = next(iter(torch.utils.data.DataLoader(tr.train_ds, batch_size=2)))
    tr.train_step(images, inst, targets, np.random.default_rng(0))
    for k, v in tr.model.image_encoder.state_dict().items():
        assert torch.equal(before[k], v), k


@pytest.mark.slow
def test_real_unetr_step(tmp_path):
    tr = make(tmp_path)
    tr.model.instance_decoder = build_model("tiny", instance_decoder="unetr").instance_decoder
    tr.__init__(tr.cfg, tr.model, tr.train_ds, tr.val_ds)
    images, inst, targets = next(iter(torch.utils.data.DataLoader(tr.train_ds, batch_size=2)))
    out = tr.train_step(images, inst, targets, np.random.default_rng(0))
    assert np.isfinite(out["decoder_loss"]) and np.isfinite(out["sam_loss"])
