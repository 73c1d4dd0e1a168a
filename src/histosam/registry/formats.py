"""Checkpoint formats: read any supported file, tell what it holds, and write histosam / micro-sam files.

Supported inputs (detected from content, not from the file name):

1. Meta's SAM ``.pth`` and the PathoSAM ``*_histopathology`` encoder files: a flat SAM state dict
   (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).
2. micro-sam / PathoSAM / bioimage.io exports: ``{"model_state": sam_state, "decoder_state": unetr_state}``
   (``model_state`` keys may carry torch-em's ``sam.`` prefix; torch-em training checkpoints also hold optimiser
   state, which is ignored).
3. Separate decoder files (micro-sam ``*_decoder``): a flat dict of UNETR keys (``base.*``, ``decoder.*``,
   ``deconv*``, ``out_conv.*``).
4. histosam's own format, by role (version 2): ``{"format": "histosam", "version": 2, "config": ModelConfig dict,
   "roles": {role: state dict}, "weights_sha256": {role: checksum}}``. Roles: ``encoder`` (``image_encoder``
   keys without the prefix), ``masks`` (``prompt_encoder.*`` and ``mask_decoder.*``), ``instances`` (the AIS head's
   keys without prefix) and, as heads are added, their own roles (:data:`histosam.models.heads.ROLES`). A file
   may hold any subset of roles: a class head shipped alone loads on top of a model from another file.
   Version 1 (``"state_dict"``: the whole model's state dict, one ``weights_sha256``) still loads.
   Each checksum is :func:`state_sha256` of that role's state, checked on load.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from histosam.errors import CheckpointError
from histosam.io.atomic import atomic_torch_save

HISTOSAM_FORMAT_VERSION = 2
#: model state-dict prefixes of each role (``masks`` keeps its prefixes inside the role's state)
ROLE_PREFIXES: dict[str, tuple[str, ...]] = {"encoder": ("image_encoder.",), "masks": ("prompt_encoder.",
                                             "mask_decoder."), "instances": ("instance_decoder.",),
                                 "classes": ("class_decoder.",), "tissue": ("tissue_decoder.",),
                                 "context": ("context_decoder.",)}
_DECODER_PREFIXES = ("base.", "decoder.", "deconv1.", "deconv2.", "deconv3.", "deconv4.", "deconv_out.",
                     "decoder_head.", "out_conv.")


@dataclass
class CheckpointContents:
    """What a checkpoint file holds, split into parts.

    Attributes:
        kind: ``"sam"`` (flat SAM), ``"micro_sam"``, ``"decoder"`` (decoder only) or ``"histosam"``.
        sam_state: encoder + prompt encoder + mask decoder weights (SAM key names), or ``None``.
        decoder_state: instance-decoder weights (UNETR / nano key names), or ``None``.
        config: histosam :class:`~histosam.models.sam.ModelConfig` dict for ``"histosam"`` files.
        extra: anything else worth keeping (e.g. training metadata).
    """

    kind: str
    sam_state: dict[str, torch.Tensor] | None
    decoder_state: dict[str, torch.Tensor] | None = None
    config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: heads beyond SAM's and the AIS head, by role (histosam files of version >= 2)
    other_roles: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def roles(self) -> dict[str, dict[str, torch.Tensor]]:
        """The weights by role (``encoder``, ``masks``, ``instances``, ...), each without the model prefix
        (``masks`` keeps ``prompt_encoder.`` / ``mask_decoder.``)."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        if self.sam_state:
            enc = {k[len("image_encoder."):]: v for k, v in self.sam_state.items() if k.startswith("image_encoder.")}
            masks = {k: v for k, v in self.sam_state.items() if k.startswith(ROLE_PREFIXES["masks"])}
            if enc:
                out["encoder"] = enc
            if masks:
                out["masks"] = masks
        if self.decoder_state:
            out["instances"] = dict(self.decoder_state)
        out.update(self.other_roles)
        return out


_MAGIC_NAMES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF image"),
                (b"MM\x00*", "a TIFF image"), (b"GIF8", "a GIF image"), (b"\x1f\x8b", "a gzip archive"),
                (b"%PDF", "a PDF document"), (b"<", "an HTML/XML page (a failed download?)"),
                (b"{", "a JSON/text file"))


def _sniff(head: bytes) -> str | None:
    """``None`` when ``head`` can start a PyTorch checkpoint (zip archive or legacy pickle), else what it looks like."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    for magic, what in _MAGIC_NAMES:
        if head.startswith(magic):
            return what
    if len(head) >= 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32):
        return "a safetensors file (not supported: convert it to a PyTorch .pt/.pth state dict)"
    if head.strip() and all(32 <= c < 127 or c in b"\t\n\r" for c in head):
        return "a text file"
    return "random bytes (neither a zip archive nor a pickle)"


def read_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> Any:
    """``torch.load`` a file on the CPU with ``weights_only=True`` and turn every failure into a
    :class:`CheckpointError` (a missing, empty, foreign, truncated or corrupt file, or one that holds pickled
    Python objects while ``allow_pickle`` is False)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted download?")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be opened ({exc})") from exc
    what = _sniff(head)
    if what is not None:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it looks like {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on junk input
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if not allow_pickle and ("Unsupported global" in msg or "GLOBAL" in msg):
            raise CheckpointError(
                f"{path} contains pickled Python objects besides weights (e.g. a torch-em training checkpoint). "
                "histosam loads weights only by default; if you trust the file, pass allow_pickle=True "
                "(CLI: --allow-pickle)") from exc
        raise CheckpointError(f"{path} is not a PyTorch checkpoint or is corrupt ({_first_line(exc)})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint: it is truncated or corrupt "
                              f"({_first_line(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 -- the unpickler raises anything (IndexError, KeyError, ...) on junk
        raise CheckpointError(f"{path} is not a valid PyTorch checkpoint ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _is_decoder_state(state: dict[str, Any]) -> bool:
    keys = [k for k in state if not k.startswith("encoder.")]
    return bool(keys) and all(k.startswith(_DECODER_PREFIXES) for k in keys)


def _tensors_only(state: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where} is not a state dict of tensors")
    return dict(state)


def split_checkpoint(obj: Any, source: str = "checkpoint") -> CheckpointContents:
    """Classify a loaded checkpoint object (see the module docstring for the formats)."""
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a model state dict")
    if obj.get("format") == "histosam":
        version = obj.get("version", 0)
        if not isinstance(version, int) or version > HISTOSAM_FORMAT_VERSION:
            raise CheckpointError(f"{source} was written by a newer histosam (format version {version}); update "
                                  "histosam to load it")
        if version >= 2:
            return _split_roles(obj, source)
        state = _tensors_only(obj.get("state_dict"), f"{source}['state_dict']")
        _check_sum(obj.get("weights_sha256"), state, source)
        sam = {k: v for k, v in state.items() if not k.startswith("instance_decoder.")}
        dec = {k[len("instance_decoder."):]: v for k, v in state.items() if k.startswith("instance_decoder.")}
        extra = {k: v for k, v in obj.items() if k not in ("state_dict", "config")}
        return CheckpointContents("histosam", sam, dec or None, _config_dict(obj, source), extra)
    if "model_state" in obj:
        model_state = _tensors_only(obj["model_state"], f"{source}['model_state']")
        model_state = {k[4:] if k.startswith("sam.") else k: v for k, v in model_state.items()}
        dec = obj.get("decoder_state")
        if dec is not None:
            dec = {k: v for k, v in _tensors_only(dec, f"{source}['decoder_state']").items()
                   if not k.startswith("encoder.")}
        return CheckpointContents("micro_sam", model_state, dec or None)
    state = _tensors_only(obj, source)
    if any(k.startswith("image_encoder.") for k in state):
        return CheckpointContents("sam", state)
    if _is_decoder_state(state):
        return CheckpointContents("decoder", None, {k: v for k, v in state.items() if not k.startswith("encoder.")})
    sample = ", ".join(list(state)[:5])
    raise CheckpointError(f"{source} is not a SAM, micro-sam, PathoSAM or histosam checkpoint (keys: {sample}, ...)")


def _check_sum(stored: Any, state: dict[str, torch.Tensor], where: str) -> None:
    if stored is not None and stored != state_sha256(state):
        raise CheckpointError(f"{where}: the weights do not match the checksum stored in the file (the file is "
                              "damaged: copy or download it again)")


def _split_roles(obj: dict[str, Any], source: str) -> CheckpointContents:
    """A version-2 histosam file: ``roles`` -> the parts of :class:`CheckpointContents`."""
    from histosam.models.heads import ROLES

    roles = obj.get("roles")
    if not isinstance(roles, dict) or not roles:
        raise CheckpointError(f"{source} is a histosam file without weights ('roles' is missing or empty)")
    sums = obj.get("weights_sha256") or {}
    if not isinstance(sums, dict):
        raise CheckpointError(f"{source}: 'weights_sha256' must map each role to its checksum")
    states: dict[str, dict[str, torch.Tensor]] = {}
    for role, state in roles.items():
        if role != "encoder" and role not in ROLES:
            raise CheckpointError(f"{source} holds weights for the head role {role!r}, which this histosam does not "
                                  "know (written by a newer histosam?)")
        states[role] = _tensors_only(state, f"{source}['roles'][{role!r}]")
        _check_sum(sums.get(role), states[role], f"{source} ({role})")
    sam = {f"image_encoder.{k}": v for k, v in states.pop("encoder", {}).items()}
    sam.update(states.pop("masks", {}))
    dec = states.pop("instances", None)
    extra = {k: v for k, v in obj.items() if k not in ("roles", "config")}
    return CheckpointContents("histosam", sam or None, dec, _config_dict(obj, source), extra, states)


def _config_dict(obj: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``config`` mapping of a histosam file (``{}`` when absent); anything else is a :class:`CheckpointError`."""
    config = obj.get("config")
    if config is None:
        return {}
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(f"{source} is a histosam file whose 'config' is a {type(config).__name__}, not a "
                              "mapping of names to values (the file is damaged or was not written by histosam)")
    import typing

    from histosam.models.sam import ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    for key, value in config.items():
        if key in hints and not _fits(value, hints[key]):
            raise CheckpointError(f"{source}: config key {key!r} holds {type(value).__name__} {str(value)[:40]!r}, "
                                  f"not {_type_name(hints[key])} (the file is damaged or was not written by histosam)")
    return dict(config)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a plain value (as ``torch.load(weights_only=True)`` returns it) fits a type annotation."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list | tuple) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def vit_config_from_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Infer the ViT hyper-parameters (embed_dim, depth, heads, global blocks, img_size, window) from weights."""
    try:
        embed_dim = state["image_encoder.patch_embed.proj.weight"].shape[0]
        grid = state["image_encoder.pos_embed"].shape[1]
    except KeyError as exc:
        raise CheckpointError(f"the SAM state lacks {exc.args[0]!r}: not a ViT image encoder") from exc
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    depth = len(blocks)
    head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    sizes = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in blocks]
    global_idx = tuple(i for i, s in zip(blocks, sizes) if s == 2 * grid - 1)
    windowed = [s for s in sizes if s != 2 * grid - 1]
    window = (windowed[0] + 1) // 2 if windowed else 14
    return dict(embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim, global_attn_indexes=global_idx,
                img_size=grid * 16, window_size=window)


def identify_architecture(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """``(architecture, overrides)`` for a SAM state dict: an official size when it matches, else overrides."""
    from histosam.models.vit import VIT_CONFIGS

    if any(k.startswith("image_encoder.layers.") for k in state):
        return "vit_t", {}
    cfg = vit_config_from_state(state)
    for name, ref in VIT_CONFIGS.items():
        full = dict(img_size=1024, window_size=14)
        full.update(ref)
        if all(cfg[k] == (tuple(v) if isinstance(v, list | tuple) else v) for k, v in full.items()):
            return name, {}
    return "vit_b", cfg


def decoder_kind(decoder_state: dict[str, torch.Tensor]) -> str:
    """``"unetr"`` (ConvTranspose samplers, released decoders) or ``"unetr_interp"`` (bilinear + 1×1 conv)."""
    transposed = any(".block." in k for k in decoder_state if k.startswith("decoder.samplers"))
    return "unetr" if transposed else "unetr_interp"


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, shapes, dtypes and bytes, in key order: the checksum histosam stores in
    its own files (``weights_sha256``) and checks on load (torch's zip reader checks no CRC, so flipped bytes in
    a file would otherwise load silently)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_roles(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """A model's weights split by role (see the module docstring), on the CPU."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for role, prefixes in ROLE_PREFIXES.items():
        keep_prefix = role == "masks"
        part = {(k if keep_prefix else k[len(p):]): v for k, v in state.items() for p in prefixes if k.startswith(p)}
        if part:
            out[role] = part
    claimed = {k for k in state if k.startswith(sum(ROLE_PREFIXES.values(), ()))}
    if len(claimed) != len(state):
        other = sorted(set(state) - claimed)[:3]
        raise CheckpointError(f"weights outside the known roles cannot be saved yet (e.g. {other})")
    return out


def save_histosam(model: torch.nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                  roles: tuple[str, ...] | None = None, storage_dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` in histosam's format atomically: config, weights by role with a checksum per role, optional
    metadata. ``roles`` limits the file to some roles (e.g. ``("instances",)`` for a head shipped alone).
    ``storage_dtype`` (e.g. ``torch.float16``) stores the floating-point weights in that type to halve a shipped
    file; loading casts them back to the model's dtype (the checksums cover the stored tensors)."""
    parts = model_roles(model)
    if storage_dtype is not None:
        parts = {r: {k: (v.to(storage_dtype) if v.is_floating_point() else v) for k, v in st.items()}
                 for r, st in parts.items()}
    if roles is not None:
        unknown = sorted(set(roles) - set(parts))
        if unknown:
            raise CheckpointError(f"the model has no weights for role(s) {unknown}; it has {sorted(parts)}")
        parts = {r: parts[r] for r in roles}
    payload = {"format": "histosam", "version": HISTOSAM_FORMAT_VERSION, "config": model.config.to_dict(),
               "roles": parts, "weights_sha256": {r: state_sha256(st) for r, st in parts.items()}}
    payload.update(extra or {})
    return atomic_torch_save(payload, path)


def export_micro_sam(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``{"model_state", "decoder_state"}`` as micro-sam's ``export_custom_sam_model`` does (ViT models)."""
    if model.config.architecture not in ("vit_b", "vit_l", "vit_h", "vit_t", "tiny"):
        raise CheckpointError(f"micro-sam cannot build a {model.config.architecture!r} model; export only ViT models")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("instance_decoder.")}
    payload: dict[str, Any] = {"model_state": state}
    if model.instance_decoder is not None:
        payload["decoder_state"] = {k: v.detach().cpu() for k, v in model.instance_decoder.state_dict().items()}
    return atomic_torch_save(payload, path)


