"""Checkpoint formats, strict loading, clear errors on bad files, and the download cache (no network)."""

from __future__ import annotations

import argparse
import hashlib
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import histosam
from histosam.errors import CheckpointError, ModelNotAvailableError
from histosam.models.build import build_model
from histosam.registry import download, formats
from histosam.registry.entries import REGISTRY


def _random_tiny(decoder: str | None = "unetr", seed: int = 0):
    """The 256-px test ViT-SAM (same key layout as Meta's SAM / micro-sam) with every weight perturbed."""
    torch.manual_seed(seed)
    model = build_model("tiny", instance_decoder=decoder)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.5)
    return model.eval()


def _sam_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("instance_decoder.")}


def _dec_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.instance_decoder.state_dict().items()}


def _assert_same_weights(a, b, sam_only: bool = False) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    if sam_only:
        sa, sb = _sam_state(a), _sam_state(b)
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def model():
    return _random_tiny()


@pytest.fixture(scope="module")
def flat_sam(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth"
    torch.save(_sam_state(model), path)
    return path


# ---------------------------------------------------------------------------------------------- good formats

def test_flat_sam_pth(model, flat_sam):
    loaded = histosam.load_model(flat_sam, device="cpu")
    assert loaded.config.architecture == "tiny"
    assert loaded.config.name == "sam_tiny"
    assert loaded.instance_decoder is None
    assert loaded.checkpoint_path == str(flat_sam)
    _assert_same_weights(loaded, model, sam_only=True)


@pytest.mark.parametrize("prefix", ["", "sam."])
@pytest.mark.parametrize("kind", ["unetr", "unetr_interp"])
def test_micro_sam_dict(tmp_path, prefix, kind):
    src = _random_tiny(kind, seed=3)
    # torch-em's UNETR state holds the shared encoder too; micro-sam drops it, but tolerate it
    dec = {**_dec_state(src), "encoder.patch_embed.proj.weight": torch.zeros(1)}
    model_state = {prefix + k: v for k, v in _sam_state(src).items()}
    path = tmp_path / "micro.pt"
    torch.save({"model_state": model_state, "decoder_state": dec}, path)
    loaded = histosam.load_model(path, device="cpu")
    assert loaded.config.instance_decoder == kind
    _assert_same_weights(loaded, src)
    assert loaded.instance_decoder.deconv1.block[2].bn_mode == "batch_stats"


def test_micro_sam_training_checkpoint_needs_allow_pickle(tmp_path, model):
    path = tmp_path / "train.pt"
    torch.save({"model_state": _sam_state(model), "decoder_state": _dec_state(model),
                "optimizer_state": {"lr": 1e-4}, "init": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        histosam.load_model(path, device="cpu")
    loaded = histosam.load_model(path, device="cpu", allow_pickle=True)
    _assert_same_weights(loaded, model)


def test_separate_decoder_file(tmp_path, model, flat_sam):
    dec_path = tmp_path / "tiny_decoder.pt"
    torch.save(_dec_state(model), dec_path)
    loaded = histosam.load_model(flat_sam, device="cpu", decoder=dec_path, bn_mode="eval")
    assert loaded.config.instance_decoder == "unetr"
    assert loaded.instance_decoder.deconv1.block[2].bn_mode == "eval"
    _assert_same_weights(loaded, model)


def test_histosam_roundtrip(tmp_path, model):
    model.config.postprocess = {"center_distance_threshold": 0.4}
    path = formats.save_histosam(model, tmp_path / "sub" / "own.pt", extra={"trained_on": "nothing"})
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    raw = formats.read_checkpoint(path)
    assert raw["format"] == "histosam" and raw["trained_on"] == "nothing"
    loaded = histosam.load_model(path, device="cpu")
    assert loaded.config.architecture == "tiny"
    assert loaded.config.instance_decoder == "unetr"
    assert loaded.config.postprocess == {"center_distance_threshold": 0.4}
    _assert_same_weights(loaded, model)


def test_export_micro_sam_reloads_equal(tmp_path, model):
    path = formats.export_micro_sam(model, tmp_path / "export.pt")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model_state", "decoder_state"}
    assert all(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in raw["model_state"])
    assert "base.block.1.weight" in raw["decoder_state"]
    loaded = histosam.load_model(path, device="cpu")
    _assert_same_weights(loaded, model)


def test_export_micro_sam_refuses_nano(tmp_path):
    with pytest.raises(CheckpointError, match="export only ViT"):
        formats.export_micro_sam(build_model("nano"), tmp_path / "nano.pt")


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("content,words", [
    (bytes(range(256)) * 4, "neither a zip archive nor a pickle"),
    (b"a,b,c\n1,2,3\n", "text file"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "PNG image"),
    (b"<html><body>Forbidden</body></html>", "HTML"),
])
def test_foreign_files(tmp_path, content, words):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        histosam.load_model(path, device="cpu")


@pytest.mark.parametrize("content", [b"a", b"Q", b")s", b"t", b"\x80", b"\x81", b"\x86", b"hello",
                                     b"\x80\x02}q\x00(X\x01\x00\x00\x00a", b"\x80\x05\x95" + bytes(range(40))])
def test_junk_never_leaks_a_raw_exception(tmp_path, content):
    """Reported: ``read_checkpoint`` raised a bare IndexError/KeyError for such files."""
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    for allow in (False, True):
        with pytest.raises(CheckpointError, match="junk.bin"):
            formats.read_checkpoint(path, allow_pickle=allow)


def test_truncated_checkpoint(tmp_path, flat_sam):
    data = flat_sam.read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        histosam.load_model(path, device="cpu")


def test_empty_missing_and_folder(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        histosam.load_model(tmp_path / "empty.pt", device="cpu")
    with pytest.raises(CheckpointError, match="is a folder"):
        formats.read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        formats.read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ModelNotAvailableError, match=r"checkpoint file .*nope.pt does not exist"):
        histosam.load_model(tmp_path / "nope.pt")


def test_wrong_architecture_requested(flat_sam):
    with pytest.raises(CheckpointError, match="is a tiny checkpoint, but vit_b was requested"):
        histosam.load_model(flat_sam, device="cpu", architecture="vit_b")
    assert histosam.load_model(flat_sam, device="cpu", architecture="tiny").config.architecture == "tiny"


def test_require_decoder(flat_sam):
    with pytest.raises(CheckpointError, match="no instance decoder"):
        histosam.load_model(flat_sam, device="cpu", require_decoder=True)


def test_decoder_only_file_alone(tmp_path, model):
    path = tmp_path / "dec.pt"
    torch.save(_dec_state(model), path)
    with pytest.raises(CheckpointError, match="holds only an instance decoder"):
        histosam.load_model(path, device="cpu")


def test_decoder_argument_without_decoder(tmp_path, flat_sam):
    with pytest.raises(CheckpointError, match="holds no instance decoder"):
        histosam.load_model(flat_sam, device="cpu", decoder=flat_sam)


def test_arbitrary_pickle_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"image_encoder.x": torch.zeros(1), "payload": argparse.Namespace(cmd="rm -rf /")}, path)
    with pytest.raises(CheckpointError) as info:
        histosam.load_model(path, device="cpu")
    assert "allow_pickle" in str(info.value) and "--allow-pickle" in str(info.value)


def test_shape_mismatch_and_foreign_keys(tmp_path, model):
    state = _sam_state(model)
    state["mask_decoder.iou_token.weight"] = torch.zeros(2, 256)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches .*iou_token.weight: checkpoint \(2, 256\)"):
        histosam.load_model(tmp_path / "bad.pt", device="cpu")
    torch.save({"fc.weight": torch.zeros(2), "fc.bias": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a SAM, micro-sam, PathoSAM or histosam checkpoint"):
        histosam.load_model(tmp_path / "other.pt", device="cpu")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        histosam.load_model(tmp_path / "list.pt", device="cpu")


# ---------------------------------------------------------------------------------------------- registry / cache

@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("HISTOSAM_MODEL_DIR", str(folder))
    return folder


def test_offline_registry_model(cache, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    entry = REGISTRY["vit_b"]
    with pytest.raises(ModelNotAvailableError) as info:
        histosam.load_model("vit_b", device="cpu")
    msg = str(info.value)
    assert entry.url in msg and str(cache / entry.filename) in msg
    assert not cache.exists() or not list(cache.iterdir())


def test_cached_registry_file_is_used(cache, monkeypatch, flat_sam):
    """A file the user placed in the cache by hand loads without any network access."""
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("no download expected"))
    monkeypatch.setitem(REGISTRY, "vit_b", REGISTRY["vit_b"].__class__(
        **{**REGISTRY["vit_b"].__dict__, "architecture": "tiny"}))
    cache.mkdir()
    (cache / REGISTRY["vit_b"].filename).write_bytes(flat_sam.read_bytes())
    model = histosam.load_model("vit_b", device="cpu")
    assert model.config.name == "vit_b" and model.config.architecture == "tiny"


def _payload(tmp_path, size: int) -> tuple[str, bytes]:
    data = bytes(range(256)) * (size // 256)
    src = tmp_path / "remote.bin"
    src.write_bytes(data)
    return src.as_uri(), data


def test_fetch_verifies_hash(cache, tmp_path):
    url, data = _payload(tmp_path, 4096)
    with pytest.raises(CheckpointError, match="expected 0000"):
        download.fetch(url, "m.pt", "sha256:" + "0" * 64, progress=False)
    assert not list(cache.iterdir())  # nothing enters the cache, no .part left
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    path = download.fetch(url, "m.pt", good, progress=False)
    assert path == cache / "m.pt" and path.read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == ["m.pt"]


def test_fetch_progress_callback(cache, tmp_path):
    url, data = _payload(tmp_path, (5 << 20) // 2)  # 2.5 MiB: three blocks
    calls: list[tuple[int, int | None]] = []
    path = download.fetch(url, "sub/p.pt", None, progress=lambda done, total: calls.append((done, total)))
    assert path.read_bytes() == data
    n = len(data)
    assert calls == [(0, n), (1 << 20, n), (2 << 20, n), (n, n)]


def test_fetch_cancel(cache, tmp_path):
    url, _ = _payload(tmp_path, 3 << 20)
    event = threading.Event()
    event.set()
    with pytest.raises(download.DownloadCancelled, match="cancelled"):
        download.fetch(url, "c.pt", None, progress=False, cancel=event)
    event.clear()

    def cancel_after_first_block(done: int, total: int | None) -> None:
        if done > 0:
            event.set()

    with pytest.raises(ModelNotAvailableError, match="cancelled"):
        download.download(url, "c.pt", progress=cancel_after_first_block, cancel=event)
    assert not list(cache.iterdir())


def test_fetch_callback_exception_aborts(cache, tmp_path):
    url, _ = _payload(tmp_path, 2 << 20)

    class Stop(Exception):
        pass

    def stop(done: int, total: int | None) -> None:
        if done:
            raise Stop

    with pytest.raises(Stop):
        download.fetch(url, "s.pt", None, progress=stop)
    assert not list(cache.iterdir())
