"""Training configuration: one flat dataclass, loaded from YAML and overridable from the command line.

Defaults follow the PathoSAM generalist training (``lr 1e-5``, AdamW with weight decay 0.01,
``ReduceLROnPlateau(factor=0.9, patience=10)`` stepped per epoch on the validation loss, batch 2,
512² patches, 8 sub-iterations, mask prompt probability 0.5, box distortion 0.025, at least 4
instances of ≥ 10 px per patch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histosam.errors import HistosamError

FINETUNE_MODES = ("mask_decoder", "encoder_and_mask_decoder", "all", "decoders")


class ConfigError(HistosamError):
    """A training configuration is invalid (unknown key, wrong type, bad value)."""


@dataclass
class TrainConfig:
    """All options of ``histosam train``; every field is a YAML key and a ``--flag``."""

    # model
    model: str = "vit_b"  #: name for ``histosam.models.build.build_model``
    checkpoint: str | None = None  #: initial weights (histosam or micro-sam format)
    finetune: str = "all"  #: one of FINETUNE_MODES
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
        """Check values; raises ``ConfigError``. Returns self."""
        if self.finetune not in FINETUNE_MODES:
            raise ConfigError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")
        for name in ("patch_size", "batch_size", "n_objects", "n_sub_iterations", "epochs",
                     "iterations_per_epoch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ConfigError(f"mask_prob must be in [0, 1], got {self.mask_prob}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(f"scale_range must be [low, high] with 0 < low <= high, got {self.scale_range}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.sam_loss_resolution not in ("full", "low"):
            raise ConfigError(f"sam_loss_resolution must be 'full' or 'low', got {self.sam_loss_resolution!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_fields() -> list[dataclasses.Field]:
    """The dataclass fields of ``TrainConfig`` (used to generate CLI flags)."""
    return list(dataclasses.fields(TrainConfig))


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a validated config from a mapping; unknown keys raise ``ConfigError``."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    try:
        cfg = TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    if isinstance(cfg.data_dirs, str):
        cfg.data_dirs = [cfg.data_dirs]
    if isinstance(cfg.val_ids, str):
        cfg.val_ids = [cfg.val_ids]
    cfg.val_ids = [str(v) for v in cfg.val_ids]
    return cfg.validate()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config; ``overrides`` (e.g. from CLI flags) win over the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values")
    data.update(overrides or {})
    # relative data folders are relative to the working directory, like every CLI path
    return from_dict(data)
