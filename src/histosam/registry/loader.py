"""``load_model``: registry name or checkpoint path → a ready :class:`~histosam.models.sam.SegmentAnything`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from histosam.errors import CheckpointError
from histosam.models.build import build_from_config, build_model
from histosam.models.sam import ModelConfig, SegmentAnything
from histosam.registry import formats
from histosam.registry.download import fetch
from histosam.registry.entries import DEFAULT_MODEL, REGISTRY, URL_ALIASES, get_entry

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def resolve_files(name_or_path: str | os.PathLike) -> tuple[str, Path, Path | None]:
    """``(model name, checkpoint path, separate decoder path or None)``, downloading registry files if needed."""
    text = str(name_or_path)
    if text in REGISTRY or text in URL_ALIASES:
        entry = get_entry(text)
        if entry.packaged:
            path = PACKAGE_ROOT / entry.packaged
            if not path.exists():
                raise CheckpointError(f"the packaged model {entry.name} is missing from this installation ({path})")
            verify_file(path, entry.hash, f"the packaged model {entry.name}",
                        "reinstall histosam (pip install --force-reinstall) or restore the file from the repository")
            return entry.name, path, None
        if entry.url is None:
            raise CheckpointError(f"the registry entry {entry.name} has neither a download URL nor a packaged file")
        path = fetch(entry.url, entry.filename, entry.hash)
        decoder = None
        if entry.decoder_url is not None and entry.decoder_filename is not None:
            decoder = fetch(entry.decoder_url, entry.decoder_filename, entry.decoder_hash)
        return entry.name, path, decoder
    path = Path(text).expanduser()
    if path.exists():
        return path.stem, path, None
    if os.sep in text or "/" in text or path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"):
        from histosam.errors import ModelNotAvailableError

        raise ModelNotAvailableError(f"checkpoint file {path} does not exist (and {path.name!r} is not a registered "
                                     f"model; registered: {', '.join(sorted(REGISTRY))})")
    get_entry(text)  # raises the "unknown model" error listing the registry
    raise AssertionError("unreachable")


def verify_file(path: Path, expected: str | None, what: str, remedy: str) -> None:
    """Raise :class:`CheckpointError` when ``path``'s hash differs from ``expected`` (``"algo:hex"``)."""
    if not expected:
        return
    from histosam.registry.download import file_hash

    algo, _, digest = expected.partition(":")
    if file_hash(path, algo) != digest:
        raise CheckpointError(f"{what} ({path}) does not match its published {algo} hash: the file is damaged or "
                              f"was replaced; {remedy}")


def verify_entry(name: str) -> list[tuple[Path, str]]:
    """Check every file of registry entry ``name`` that is present (packaged or cached) against its hash.
    Returns ``[(path, "ok" | "missing" | "no hash" | "MISMATCH")]``."""
    from histosam.registry.download import cache_dir, file_hash

    entry = get_entry(name)
    files = [(PACKAGE_ROOT / entry.packaged, entry.hash)] if entry.packaged else [
        (cache_dir() / entry.filename, entry.hash)] + (
        [(cache_dir() / entry.decoder_filename, entry.decoder_hash)] if entry.decoder_filename else [])
    files += [(PACKAGE_ROOT / url[len("package:"):] if url.startswith("package:") else cache_dir() / filename, digest)
              for _, url, digest, filename in entry.extra_files]
    out = []
    for path, expected in files:
        if not path.is_file():
            out.append((path, "missing"))
        elif not expected:
            out.append((path, "no hash"))
        else:
            algo, _, digest = expected.partition(":")
            out.append((path, "ok" if file_hash(path, algo) == digest else "MISMATCH"))
    return out


def extra_role_files(name_or_path: str | os.PathLike) -> list[tuple[str, Path]]:
    """``[(role, path)]`` of a registry entry's extra head files (downloaded and verified when needed)."""
    text = str(name_or_path)
    if text not in REGISTRY and text not in URL_ALIASES:
        return []
    entry = get_entry(text)
    out = []
    for role, url, digest, filename in entry.extra_files:
        if url.startswith("package:"):  # shipped inside the package: checked against its hash on every load
            path = PACKAGE_ROOT / url[len("package:"):]
            if not path.is_file():
                raise CheckpointError(f"the packaged {role} file of {entry.name} is missing from this installation "
                                      f"({path})")
            verify_file(path, digest, f"the packaged {role} weights of {entry.name}",
                        "reinstall histosam or restore the file from the repository")
            out.append((role, path))
        else:
            out.append((role, fetch(url, filename, digest)))
    return out


def _add_class_slot(model: SegmentAnything, names: list[str], colors: list, source: str) -> None:
    """Give ``model`` an (untrained) class head of ``names`` built by its architecture's builder."""
    if len(names) < 2:
        raise CheckpointError(f"{source} holds a class head but names no classes in its config")
    fresh = build_model(model.config.architecture, instance_decoder=None, class_names=names,
                        **dict(model.config.overrides))
    head = fresh.class_decoder
    assert head is not None  # the builder made one from class_names
    model.class_decoder = head.to(model.device)
    model.config.class_names = names
    model.config.class_colors = colors


def apply_role(model: SegmentAnything, role: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Load one role's weights (keys as in :attr:`formats.CheckpointContents.roles`) into ``model`` strictly."""
    if role == "encoder":
        _load_strict(model.image_encoder, state, f"{source} (encoder)")
    elif role == "masks":
        _load_strict(model.prompt_encoder, _strip(state, "prompt_encoder."), f"{source} (prompt encoder)")
        _load_strict(model.mask_decoder, _strip(state, "mask_decoder."), f"{source} (mask decoder)")
    elif role == "instances":
        if model.instance_decoder is None:
            raise CheckpointError(f"{source} holds an instance decoder, but model {model.config.name!r} has no slot "
                                  "for one (its configuration names no instance decoder)")
        _load_strict(model.instance_decoder, state, f"{source} (instance decoder)")
    elif role == "classes":
        if model.class_decoder is None:
            raise CheckpointError(f"{source} holds a class head, but model {model.config.name!r} has no slot for one "
                                  "(its configuration names no classes)")
        _load_strict(model.class_decoder, state, f"{source} (class head)")
    elif role == "tissue":
        if model.tissue_decoder is None:
            raise CheckpointError(f"{source} holds a tissue head, but model {model.config.name!r} has no slot for one "
                                  "(its configuration names no tissue classes)")
        _load_strict(model.tissue_decoder, state, f"{source} (tissue head)")
    elif role == "context":
        if model.context_decoder is None:  # the head fits any model: attach one (spec from the file's config)
            from histosam.models.context_head import attach_context_head

            attach_context_head(model, model.config.context or None, init=False)
        assert model.context_decoder is not None  # attached above
        _load_strict(model.context_decoder, state, f"{source} (context head)")
    else:
        raise CheckpointError(f"{source}: this histosam cannot attach a {role!r} head yet")


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{what} does not fit the architecture: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def model_from_contents(contents: formats.CheckpointContents, name: str = "",
                        architecture: str | None = None) -> SegmentAnything:
    """Build the architecture a checkpoint describes and load its weights strictly."""
    if contents.kind == "histosam":
        config = ModelConfig.from_dict(contents.config or {})
        model = build_from_config(config)
        roles = contents.roles
        if "encoder" not in roles or "masks" not in roles:
            raise CheckpointError(f"{name!r} holds only the {sorted(roles)} weights of a model; register it as an "
                                  "extra file of a registry entry, or load the full model first")
        if "context" in contents.other_roles and model.context_decoder is None:
            from histosam.models.context_head import attach_context_head

            attach_context_head(model, config.context or None, init=False)
        full: dict[str, torch.Tensor] = dict(contents.sam_state or {})
        for role, state in [("instances", contents.decoder_state or {}), *contents.other_roles.items()]:
            prefix = formats.ROLE_PREFIXES.get(role, (None,))[0]
            if prefix is None:
                raise CheckpointError(f"{name!r}: this histosam cannot attach a {role!r} head yet")
            full.update({f"{prefix}{k}": v for k, v in state.items()})
        _load_strict(model, full, f"model {name!r}")
    else:
        if contents.sam_state is None:
            raise CheckpointError(f"{name!r} holds only an instance decoder; load it together with its encoder "
                                  "checkpoint (decoder=... / --decoder)")
        arch, overrides = formats.identify_architecture(contents.sam_state)
        if architecture and architecture != arch:
            raise CheckpointError(f"{name!r} is a {arch} checkpoint, but {architecture} was requested")
        dec_kind = formats.decoder_kind(contents.decoder_state) if contents.decoder_state else None
        model = build_model(arch, instance_decoder=dec_kind, **overrides)
        encoder_state = _strip(contents.sam_state, "image_encoder.")
        if arch == "vit_t":  # TinyViT's bias index tables are recomputed; some exports store them anyway
            encoder_state = {k: v for k, v in encoder_state.items() if not k.endswith(".attention_bias_idxs")}
        _load_strict(model.image_encoder, encoder_state, f"{name!r} image encoder")
        _load_strict(model.prompt_encoder, _strip(contents.sam_state, "prompt_encoder."), f"{name!r} prompt encoder")
        _load_strict(model.mask_decoder, _strip(contents.sam_state, "mask_decoder."), f"{name!r} mask decoder")
        other = [k for k in contents.sam_state if not k.startswith(("image_encoder.", "prompt_encoder.",
                                                                     "mask_decoder."))]
        if other:
            raise CheckpointError(f"{name!r} has unexpected keys outside SAM's modules (e.g. {other[0]})")
        if contents.decoder_state and model.instance_decoder is not None:
            _load_strict(model.instance_decoder, contents.decoder_state, f"{name!r} instance decoder")
    model.config.name = name or model.config.name
    return model


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_model(name_or_path: str | os.PathLike | None = None, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, decoder: str | os.PathLike | None = None,
               bn_mode: str = "batch_stats", allow_pickle: bool = False,
               architecture: str | None = None, require_decoder: bool = False) -> SegmentAnything:
    """Load a model by registry name (``histosam models``) or from a checkpoint file of any supported format.

    Args:
        name_or_path: registry name, URL alias, or path; ``None`` = the embedded default (``histosam-nano``).
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        dtype: cast the weights (e.g. ``torch.bfloat16``); default keeps fp32 (the predictor uses autocast).
        decoder: a separate instance-decoder file (micro-sam ``*_decoder.pt``).
        bn_mode: UNETR BatchNorm behaviour: ``"batch_stats"`` (micro-sam parity) or ``"eval"``.
        allow_pickle: allow files with pickled Python objects (trusted torch-em training checkpoints).
        architecture: fail unless the checkpoint is this architecture.
        require_decoder: fail unless the model has an instance decoder (needed for AIS).
    Returns:
        the model in eval mode. ``model.config.name`` names it; ``model.checkpoint_path`` says where it came from.
    """
    name, path, registry_decoder = resolve_files(name_or_path or DEFAULT_MODEL)
    contents = formats.split_checkpoint(formats.read_checkpoint(path, allow_pickle), str(path))
    decoder_path = decoder or registry_decoder
    if decoder_path is not None:
        dec = formats.split_checkpoint(formats.read_checkpoint(decoder_path, allow_pickle), str(decoder_path))
        if dec.decoder_state is None:
            raise CheckpointError(f"{decoder_path} holds no instance decoder")
        contents.decoder_state = dec.decoder_state
    model = model_from_contents(contents, name, architecture)
    for role, role_path in extra_role_files(name_or_path or DEFAULT_MODEL):
        part = formats.split_checkpoint(formats.read_checkpoint(role_path, allow_pickle), str(role_path))
        if role not in part.roles:
            raise CheckpointError(f"{role_path} was registered as the {role!r} weights of {name!r} but holds "
                                  f"{sorted(part.roles) or 'no weights'}")
        if role == "classes" and model.class_decoder is None:
            _add_class_slot(model, list((part.config or {}).get("class_names") or []),
                            list((part.config or {}).get("class_colors") or []), str(role_path))
        apply_role(model, role, part.roles[role], str(role_path))
    if require_decoder and model.instance_decoder is None:
        raise CheckpointError(f"model {name!r} has no instance decoder (AIS needs one): use a PathoSAM/micro-sam "
                              "checkpoint with 'decoder_state', pass decoder=PATH, or use AMG")
    set_bn_mode = getattr(model.instance_decoder, "set_bn_mode", None)
    if callable(set_bn_mode):
        set_bn_mode(bn_mode)
    from histosam.inference.runtime import resolve_device

    device = resolve_device(device)  # a one-line ParameterError for unknown or absent devices
    model = model.to(device=device, dtype=dtype).eval()
    model.checkpoint_path = str(path)
    return model


def describe(model: SegmentAnything) -> dict[str, Any]:
    """Provenance of a loaded model: name, architecture, file, and the file's sha256."""
    from histosam.registry.download import file_hash

    path = getattr(model, "checkpoint_path", None)
    return {"name": model.config.name, "architecture": model.config.architecture,
            "instance_decoder": model.config.instance_decoder, "checkpoint": path,
            "sha256": file_hash(path, "sha256") if path and Path(path).is_file() else None}
