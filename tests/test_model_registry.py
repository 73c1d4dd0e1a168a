"""Registry-wide tests (timm's habit): every registered architecture builds, declares its heads' contracts, runs
forward in fp32 and through the fast inference path, and round-trips through histosam's format by role; every
named registry entry resolves its files by role; histosam files hold roles that load separately."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histosam.errors import CheckpointError
from histosam.models.build import build_from_config, build_model
from histosam.models.heads import ROLES, HeadContract, contract_of
from histosam.models.registry import default_instance_head, list_architectures
from histosam.registry.entries import REGISTRY
from histosam.registry.formats import model_roles, read_checkpoint, save_histosam, split_checkpoint
from histosam.registry.loader import load_model

#: small overrides so that every architecture builds and runs in a second
SMALL = {
    "vit_b": dict(img_size=256, depth=2, global_attn_indexes=(1,), window_size=4),
    "vit_l": dict(img_size=256, depth=2, global_attn_indexes=(1,), window_size=4),
    "vit_h": dict(img_size=256, depth=2, global_attn_indexes=(1,), window_size=4),
    "tiny": {},
    "vit_t": dict(img_size=256),
    "nano": {},
}


def _build(arch: str, with_head: bool = True):
    torch.manual_seed(0)
    head = default_instance_head(arch) if with_head else None
    return build_model(arch, instance_decoder=head, **SMALL[arch]).eval()


def test_small_overrides_cover_the_registry():
    assert sorted(SMALL) == list_architectures()


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_architecture_builds_runs_and_round_trips(arch, tmp_path):
    model = _build(arch)
    contracts = model.contracts()
    assert set(contracts) == {"masks", "instances"}
    for role, c in contracts.items():
        assert isinstance(c, HeadContract) and c.role == role and c.role in ROLES
    assert contracts["instances"].channels == 3
    size = model.image_size
    frame = model.preprocess(torch.rand(1, 3, size, size) * 255)
    with torch.no_grad():
        emb, skips = model.encode(frame)
        assert emb.shape[:2] == (1, 256) and emb.shape[-1] * model.embedding_stride == size
        maps = model.decode_instances(emb, skips, frame)
        assert maps.shape == (1, contracts["instances"].channels, size, size)
        low, iou = model.decode_masks(emb, torch.tensor([[[size / 3, size / 2]]]), torch.ones(1, 1, dtype=torch.long))
        assert low.shape[-1] == 4 * emb.shape[-1] and iou.shape == (1, 1)
    # the fast inference path (folded/packed weights, bf16 where the CPU has it) gives maps close to fp32
    import copy

    from histosam.inference.maps import make_map_predictor, predict_instance_maps

    tile = np.random.default_rng(0).integers(0, 255, (1, size, size, 3), dtype=np.uint8)
    ref = predict_instance_maps(model, tile, "cpu", "fp32")
    fast = make_map_predictor(copy.deepcopy(model), "cpu", "auto")(tile)
    assert ref.shape == fast.shape == (1, 3, size, size) and np.abs(ref - fast).max() < 0.1
    # histosam's format: by role, rebuilt from the config alone, same weights
    path = save_histosam(model, tmp_path / "m.pt")
    assert set(read_checkpoint(path)["roles"]) == {"encoder", "masks", "instances"}
    back = load_model(path, device="cpu")
    assert back.config.architecture == arch
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    assert type(build_from_config(back.config)) is type(model)


def test_contract_is_required_and_batch_dependence_follows_bn_mode():
    model = _build("tiny")
    assert contract_of(model.instance_decoder).batch_dependent  # micro-sam's batch statistics
    model.instance_decoder.set_bn_mode("eval")
    assert not contract_of(model.instance_decoder).batch_dependent
    with pytest.raises(TypeError, match="declares no HeadContract"):
        contract_of(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="unknown head role"):
        HeadContract("colour", ("embedding",), ("x",))


def test_roles_load_separately_and_by_registry_entry(tmp_path, monkeypatch):
    """A head shipped in its own file loads by name on top of the model's main file (registry files by role)."""
    import dataclasses

    import histosam.registry.entries as entries
    import histosam.registry.loader as loader

    base = _build("nano")
    main = save_histosam(base, tmp_path / "main.pt", roles=("encoder", "masks", "instances"))
    torch.manual_seed(5)
    other = build_model("nano").eval()
    head_file = save_histosam(other, tmp_path / "head.pt", roles=("instances",))
    assert set(split_checkpoint(read_checkpoint(head_file)).roles) == {"instances"}
    with pytest.raises(CheckpointError, match="holds only the"):
        load_model(head_file, device="cpu")
    monkeypatch.setenv("HISTOSAM_MODEL_DIR", str(tmp_path / "cache"))
    entry = entries.ModelEntry("two-files", "nano", main.as_uri(), None, "two-main.pt", "test", "test",
                               extra_files=(("instances", head_file.as_uri(), None, "two-head.pt"),))
    assert set(entry.files) == {"model", "instances"}
    monkeypatch.setitem(loader.REGISTRY, "two-files", entry)
    monkeypatch.setitem(entries.REGISTRY, "two-files", entry)
    model = load_model("two-files", device="cpu")
    for k, v in other.instance_decoder.state_dict().items():
        assert torch.equal(model.instance_decoder.state_dict()[k], v)
    for k, v in base.image_encoder.state_dict().items():
        assert torch.equal(model.image_encoder.state_dict()[k], v)
    wrong = dataclasses.replace(entry, extra_files=(("instances", main.as_uri(), None, "two-wrong.pt"),))
    monkeypatch.setitem(loader.REGISTRY, "two-files", wrong)
    monkeypatch.setitem(entries.REGISTRY, "two-files", wrong)
    load_model("two-files", device="cpu")  # the main file holds an instances role too: accepted


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_entry_names_its_files_by_role(name):
    entry = REGISTRY[name]
    files = entry.files
    assert "model" in files
    for role, spec in files.items():
        assert role == "model" or role in ROLES
        assert spec.filename and (spec.url or spec.packaged)
        assert spec.hash is None or spec.hash.split(":")[0] in ("sha256", "xxh128")
    assert entry.architecture in list_architectures()


def test_version_1_files_still_load(tmp_path):
    """histosam's first format (one state_dict) loads, with and without its checksum."""
    from histosam.io.atomic import atomic_torch_save
    from histosam.registry.formats import state_sha256

    model = _build("nano")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for with_sum in (False, True):
        payload = {"format": "histosam", "version": 1, "config": model.config.to_dict(), "state_dict": state}
        if with_sum:
            payload["weights_sha256"] = state_sha256(state)
        path = atomic_torch_save(payload, tmp_path / f"v1_{with_sum}.pt")
        back = load_model(path, device="cpu")
        assert set(model_roles(back)) == {"encoder", "masks", "instances"}
        for k, v in state.items():
            assert torch.equal(back.state_dict()[k], v)


def test_class_head_travels_with_the_checkpoint(tmp_path):
    """Class names and the class head's weights round-trip through histosam's format (role 'classes')."""
    torch.manual_seed(3)
    names = ["background", "other", "inflammatory", "epithelial", "spindle-shaped"]
    model = build_model("nano", class_names=names).eval()
    assert model.contracts()["classes"].produces == tuple(names)
    path = save_histosam(model, tmp_path / "typed.pt")
    assert set(read_checkpoint(path)["roles"]) == {"encoder", "masks", "instances", "classes"}
    back = load_model(path, device="cpu")
    assert back.config.class_names == names
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    frame = model.preprocess(torch.rand(1, 3, 64, 64) * 255, pad_to=64)
    with torch.no_grad():
        emb, skips = back.encode(frame)
        assert back.decode_classes(emb, skips, frame).shape == (1, len(names), 64, 64)


def test_shipped_class_head_loads_by_name_on_top_of_the_shipped_model():
    """histosam-nano-classes = the packaged histosam-nano file + the packaged class-head file (role 'classes'),
    both checked against their sha256: the same encoder and AIS weights, plus CoNSeP's four classes."""
    typed = load_model("histosam-nano-classes", device="cpu")
    plain = load_model("histosam-nano", device="cpu")
    assert typed.config.class_names == ["background", "other", "inflammatory", "epithelial", "spindle-shaped"]
    assert len(typed.config.class_colors) == 5 and typed.contracts()["classes"].channels == 5
    for k, v in plain.state_dict().items():
        assert torch.equal(typed.state_dict()[k], v), k
    assert plain.class_decoder is None
