"""Training configuration: one flat dataclass, loaded from YAML and overridable from the command line.

Defaults follow the PathoSAM generalist training (``lr 1e-5``, AdamW with weight decay 0.01,
``ReduceLROnPlateau(factor=0.9, patience=10)`` stepped per epoch on the validation loss, batch 2,
512² patches, 8 sub-iterations, mask prompt probability 0.5, box distortion 0.025, at least 4
instances of ≥ 10 px per patch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histosam.errors import ConfigError

FINETUNE_MODES = ("mask_decoder", "encoder_and_mask_decoder", "all", "decoders")
#: Kim et al.'s three finetuning scenarios (SAM^MD, SAM^IE_MD, SAM^Whole); each is the finetune mode of its name:
#: ``mask_decoder`` trains the mask decoder only (image and prompt encoder frozen); ``encoder_and_mask_decoder``
#: trains the image encoder and the mask decoder (prompt encoder frozen); ``all`` trains the whole model (image
#: encoder, prompt encoder, mask decoder, and histosam's instance decoder when the model has one)
SCENARIOS = ("mask_decoder", "encoder_and_mask_decoder", "all")
MASK_LOSSES = ("dice", "nfl", "dice+nfl")
FRAME_PLACEMENTS = ("top_left", "random")


@dataclass
class TrainConfig:
    """All options of ``histosam train``; every field is a YAML key and a ``--flag``."""

    # model
    model: str = "vit_b"  #: name for ``histosam.models.build.build_model``
    checkpoint: str | None = None  #: initial weights (histosam or micro-sam format)
    finetune: str = "all"  #: one of FINETUNE_MODES
    scenario: str | None = None  #: Kim et al.'s scenario (SCENARIOS); sets finetune to the mode of that name
    mask_decoder: str | None = None  #: "sam" or "refine" (Kim et al.'s, from the SAM decoder); None: the model's
    mask_decoder_depth: int | None = None  #: the refine decoder's blocks (>= 2; None: 3, the paper's)
    with_instance_decoder: bool = True  #: also train the instance (AIS) decoder
    # data
    data_dirs: list[str] = field(default_factory=list)  #: folders with <id>.png + <id>_label.tif
    val_ids: list[str] = field(default_factory=list)  #: image ids used for validation
    val_fraction: float = 0.0  #: if val_ids is empty: seeded random fraction for validation
    patch_size: int = 512
    min_instances: int = 4  #: a training patch needs at least this many objects of >= min_size px
    min_size: int = 10
    augment: bool = True
    scale_range: list[float] = field(default_factory=lambda: [0.8, 1.25])
    hed_jitter: float = 0.05  #: HED stain jitter strength (0 disables)
    brightness: float = 0.1  #: brightness jitter (fraction of 255)
    contrast: float = 0.15  #: contrast jitter (multiplicative, 1 ± contrast)
    # objective
    batch_size: int = 2
    n_objects: int = 40
    n_sub_iterations: int = 8
    mask_prob: float = 0.5
    box_distortion: float = 0.025
    box_shift: float = 0.0  #: also move each box side by U(-s, s)·side length (boxes may cut into the object)
    frame_placement: str = "top_left"  #: "random": put each patch at a random place of the padded frame
    mask_loss: str = "dice"  #: one of MASK_LOSSES (nfl: Kim et al.'s Normalized Focal Loss)
    nfl_gamma: float = 2.0  #: the NFL's focusing exponent
    sam_loss_resolution: str = "full"  #: "full" (patch resolution, micro-sam) or "low" (mask-decoder output size)
    sam_images: int | None = None  #: batch images used for the SAM objective (None: all)
    joint_step: bool = False  #: one backward on SAM loss + decoder loss (one encoder pass; cheaper on CPU)
    sam_every: int = 1  #: run the interactive SAM objective every k-th iteration (decoder loss every iteration)
    pad_to_frame: bool = True  #: pad patches to the model frame; False: native models train on the patch itself
    # optimisation
    lr: float = 1e-5
    weight_decay: float = 0.01
    scheduler_factor: float = 0.9
    scheduler_patience: int = 10
    epochs: int = 100
    iterations_per_epoch: int = 100
    max_minutes: float | None = None  #: stop cleanly (and save) after this many minutes
    amp: bool = True  #: bf16 autocast on CUDA (on CPU only with cpu_amp)
    cpu_amp: bool = False  #: also bf16 autocast on CPUs with native bf16 (faster; was seen to diverge to NaN)
    grad_clip: float | None = 1.0  #: clip the gradient norm (None: off)
    # run
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    output_dir: str = "runs/histosam"
    resume: bool = True  #: continue from output_dir/latest.pt when present
    val_max_images: int | None = None  #: limit the validation images (None: all)
    val_whole_images: bool = True  #: validation mSA with histosam.segment on whole images (else centre crops)

    def validate(self) -> TrainConfig:
        """Check (and normalise) every field by its annotated type and :data:`RANGES`; raises a one-line
        ``ConfigError`` naming the key. Numeric strings (PyYAML reads ``1e-5`` as a string) become floats,
        integral floats (``2.0``) ints, a single string a one-item list. Returns self."""
        for name, hint in _type_hints().items():
            value = _coerce(name, getattr(self, name), hint)
            if value is not None and name in RANGES:
                ok, must = RANGES[name]
                if not ok(value):
                    raise ConfigError(f"config key '{name}': must be {must}, got {_show(value)}")
            setattr(self, name, value)
        if self.scenario is not None:
            if self.finetune not in ("all", self.scenario):
                raise ConfigError(f"config key 'scenario': {self.scenario} contradicts finetune: {self.finetune} "
                                  "(give one of them)")
            self.finetune = self.scenario
        if not self.model and not self.checkpoint:
            raise ConfigError("config key 'model': must name an architecture (it may be empty only with a checkpoint)")
        if self.model:
            known = _architectures()
            if known is not None and self.model not in known:
                raise ConfigError(f"config key 'model': must be one of {', '.join(known)}, got {_show(self.model)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_fields() -> list[dataclasses.Field]:
    """The dataclass fields of ``TrainConfig`` (used to generate CLI flags)."""
    return list(dataclasses.fields(TrainConfig))


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _nonempty(v: str) -> bool:
    return bool(v.strip())


#: value checks beyond the type, per key: (predicate on the converted value, what it must be); None (for
#: Optional fields) is never passed to the predicate. Keys without an entry accept any value of their type.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "finetune": (lambda v: v in FINETUNE_MODES, f"one of {', '.join(FINETUNE_MODES)}"),
    "checkpoint": (_nonempty, "a non-empty path or a model name (or null)"),
    "data_dirs": (lambda v: all(_nonempty(x) for x in v), "a list of non-empty folder paths"),
    "val_ids": (lambda v: all(_nonempty(x) for x in v), "a list of non-empty image ids"),
    "val_fraction": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "patch_size": (lambda v: v >= 16 and v % 16 == 0, "a positive multiple of 16"),
    "min_instances": (lambda v: v >= 0, ">= 0"),
    "min_size": (lambda v: v >= 0, ">= 0"),
    "scale_range": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[low, high] with 0 < low <= high"),
    "hed_jitter": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "brightness": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "contrast": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "n_objects": (lambda v: v >= 1, ">= 1"),
    "n_sub_iterations": (lambda v: v >= 1, ">= 1"),
    "mask_prob": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "box_distortion": (lambda v: v >= 0.0, ">= 0"),
    "scenario": (lambda v: v in SCENARIOS, f"one of {', '.join(SCENARIOS)} (or null)"),
    "mask_decoder": (lambda v: v in ("sam", "refine"), "'sam' or 'refine' (or null: the model's)"),
    "mask_decoder_depth": (lambda v: v >= 2, ">= 2 (or null)"),
    "box_shift": (lambda v: 0.0 <= v < 0.5, "in [0, 0.5)"),
    "frame_placement": (lambda v: v in FRAME_PLACEMENTS, f"one of {', '.join(FRAME_PLACEMENTS)}"),
    "mask_loss": (lambda v: v in MASK_LOSSES, f"one of {', '.join(MASK_LOSSES)}"),
    "nfl_gamma": (lambda v: v >= 0.0, ">= 0"),
    "sam_loss_resolution": (lambda v: v in ("full", "low"), "'full' or 'low'"),
    "sam_images": (lambda v: v >= 1, ">= 1 (or null for all)"),
    "sam_every": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0.0, "> 0"),
    "weight_decay": (lambda v: v >= 0.0, ">= 0"),
    "scheduler_factor": (lambda v: 0.0 < v < 1.0, "in (0, 1)"),
    "scheduler_patience": (lambda v: v >= 0, ">= 0"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "iterations_per_epoch": (lambda v: v >= 1, ">= 1"),
    "max_minutes": (lambda v: v > 0.0, "> 0 (or null for no limit)"),
    "grad_clip": (lambda v: v > 0.0, "> 0 (or null for no clipping)"),
    "seed": (lambda v: 0 <= v < 2**63, "in [0, 2**63)"),
    "device": (lambda v: bool(_DEVICE.fullmatch(v)), "auto, cpu, cuda, cuda:N or mps"),
    "num_workers": (lambda v: v >= 0, ">= 0"),
    "output_dir": (_nonempty, "a non-empty folder path"),
    "val_max_images": (lambda v: v >= 1, ">= 1 (or null for all)"),
}

_LIST_FROM_STRING = ("data_dirs", "val_ids")  #: a single string is read as a one-item list
_IDS = ("val_ids",)  #: list items that may be numbers in YAML (``val_ids: [001, 7]``) and become strings


@functools.cache
def _type_hints() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _architectures() -> list[str] | None:
    try:
        from histosam.models.registry import list_architectures
    except ImportError:  # a stripped installation: build_model reports unknown names itself
        return None
    return list_architectures()


def _show(value: Any) -> str:
    """A short one-line rendering of a config value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {_show(value)}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, (int, float)):
        return f"the number {_show(value)}"
    return f"a {type(value).__name__}"


def _scalar(name: str, value: Any, typ: type, where: str = "") -> Any:
    """``value`` as ``typ`` (bool, int, float or str) or a ConfigError naming the key."""
    key = f"config key '{name}'{where}"
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {_kind(value)}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and not isinstance(value, bool) and math.isfinite(value) \
                and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: must be an integer, got {_kind(value)}")
    if typ is float:
        number = value
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-5 (no dot) as a string
            try:
                number = float(value.strip().replace("_", ""))
            except ValueError:
                raise ConfigError(f"{key}: must be a number, got {_kind(value)}") from None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if not math.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {_show(value)}")
            return float(number)
        raise ConfigError(f"{key}: must be a number, got {_kind(value)}")
    if typ is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: must be a string, got {_kind(value)}")
    raise TypeError(f"TrainConfig.{name}: no config check for the type {typ!r}")  # a new field type


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's annotation (``T``, ``T | None``, ``list[T]``) and convert it."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if type(None) not in args or len(rest) != 1:
            raise TypeError(f"TrainConfig.{name}: no config check for the type {hint!r}")
        if value is None:
            return None
        return _coerce(name, value, rest[0])
    if value is None:
        raise ConfigError(f"config key '{name}': must not be null (give a value or leave the key out)")
    if typing.get_origin(hint) is list:
        (item,) = args
        if isinstance(value, (str, os.PathLike)) and name in _LIST_FROM_STRING:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{name}': must be a list, got {_kind(value)}")
        out = []
        for i, v in enumerate(value):
            if name in _IDS and isinstance(v, int) and not isinstance(v, bool):
                v = str(v)
            out.append(_scalar(name, v, item, f" item {i + 1}"))
        return out
    if isinstance(hint, type):
        return _scalar(name, value, hint)
    raise TypeError(f"TrainConfig.{name}: no config check for the type {hint!r}")


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a validated config from a mapping; unknown keys and bad values raise ``ConfigError``."""
    if not isinstance(values, dict):
        raise ConfigError(f"a training config must be a mapping of keys to values, got {_kind(values)}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted({_key_text(k) for k in values if k not in names})
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    return TrainConfig(**values).validate()


def _key_text(key: Any) -> str:
    """A key as one short line (YAML keys may be numbers, lists, or strings with newlines)."""
    text = " ".join(str(key).split()) or repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


@functools.cache
def _unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` that refuses duplicate keys (PyYAML keeps the last one silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges may be overridden
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the default constructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{_key_text(key)}'",
                                                        key_node.start_mark)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return UniqueKeyLoader


def _yaml_error(path: Path, exc: Exception) -> ConfigError:
    """A one-line message for a YAML syntax error (PyYAML's own spans several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return ConfigError(f"invalid YAML in {path}{where}: {' '.join(str(problem).split())}")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config; ``overrides`` (e.g. from CLI flags) win over the file. An empty file gives the
    defaults; every failure (missing, a folder, not text, bad YAML, not a mapping, bad values) is a
    one-line ``ConfigError``."""
    import yaml

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder, not a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a UTF-8 text (YAML) file") from None
    if "\x00" in text:
        raise ConfigError(f"config {path} is not a text (YAML) file: it contains NUL bytes")
    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader subclass: plain data only
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from exc
    except RecursionError:
        raise ConfigError(f"invalid YAML in {path}: nested too deeply") from None
    if data is None:  # empty file or only comments: the defaults
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values, got {_kind(data)}")
    data.update(overrides or {})
    # relative data folders are relative to the working directory, like every CLI path
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
