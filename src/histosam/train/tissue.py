"""Training a region model: SAM-Path's class prompts (+ second encoder) on GlaS-style gland data.

Data: ``<id>.png`` + ``<id>_label.tif`` (region instances) per image and, optionally, ``grade.csv`` one folder up
(GlaS: ``name, patient_id, grade_glas``). With ``classes="grade"`` the glands of an image take the image's grade
(``benign gland`` / ``malignant gland``): the grade is given per image, so the head learns to grade whole glands
from image-level labels only (every gland of a benign image is benign; a malignant image may hold normal-looking
glands, which are then labelled malignant); ``classes="gland"`` trains background / gland.

Targets at the head's output resolution (stride 2 of the frame): the class of every pixel and the **interior**
(each instance shrunk by ``border`` working px away from other instances and from background), whose connected
components seed the instances, so that touching glands come apart. Crops smaller than the frame sit at its
top-left and are zero-padded, as at inference; padded pixels carry no loss.

Loss (SAM-Path eq. 3, β = 0 as their best CRAG setting): ``Σ_channels (1 − α)·Dice + α·Focal`` over the K class
masks and the interior, α = 0.125. Strategies: ``encoder="frozen"`` (SAM-Path: only the class prompts, the head's
decoder, the fusion and the second encoder train) or ``"finetuned"`` (the main encoder too).
Validation: whole held-out images (split by patient) through :func:`histosam.tasks.tissue.tissue_scores`,
gland pixel Dice and GlaS object F1 (means per image); the model with the best mean of the two goes to
``best.pt`` (histosam format), the state to
``latest.pt`` (resumed with ``weights_only=True``).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from histosam.errors import DataError

__all__ = ["TissueTrainConfig", "GlandImage", "load_gland_images", "split_by_patient", "tissue_loss",
           "gland_targets", "train_tissue", "tissue_config"]

GRADE_CLASSES = ["background", "benign gland", "malignant gland"]
GLAND_CLASSES = ["background", "gland"]
#: QuPath display colours of the tissue classes
TISSUE_COLORS = {"background": [200, 200, 200], "gland": [0, 160, 80], "benign gland": [0, 160, 80],
                 "malignant gland": [200, 40, 40]}


@dataclass
class TissueTrainConfig:
    data_dir: str = "../shared/data/glas/train"
    output_dir: str = "runs/tissue"
    init: str = "histosam-nano"  #: encoder initialisation: a model name/path, or "scratch"
    #: start every weight from a region model (a histosam checkpoint with a tissue head of the same classes)
    init_model: str | None = None
    encoder: str = "finetuned"  #: frozen | finetuned
    second_encoder: bool = True
    classes: str = "grade"  #: grade | gland
    data_mpp: float = 0.62
    mpp: float = 1.24
    frame: int = 256
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-4
    iterations: int = 2000
    val_every: int = 100
    val_fraction: float = 0.2
    alpha: float = 0.125
    #: the interior target: each region shrunk by this many working px (see :func:`gland_targets`)
    interior_border: int = 3
    gamma: float = 2.0
    max_minutes: float | None = None
    seed: int = 0
    threads: int | None = None


def tissue_config(data: dict[str, Any]) -> TissueTrainConfig:
    """A :class:`TissueTrainConfig` from a YAML mapping (``task: tissue`` and any of its fields); unknown keys and
    values of the wrong type are a one-line ``ConfigError``."""
    import dataclasses

    from histosam.train.config import ConfigError

    data = {k: v for k, v in data.items() if k != "task"}
    fields = {f.name: f for f in dataclasses.fields(TissueTrainConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown tissue training key(s) {unknown}; known: {sorted(fields)}")
    kinds = {"str": str, "float": (int, float), "int": int, "bool": bool}
    for key, value in data.items():
        hint = str(fields[key].type)
        if value is None and "None" in hint:
            continue
        want = kinds[hint.split(" |")[0]]
        if isinstance(value, bool) and want is not bool or not isinstance(value, want):
            raise ConfigError(f"tissue training key {key!r} must be {hint}, got {value!r}")
    cfg = TissueTrainConfig(**data)
    if cfg.encoder not in ("frozen", "finetuned") or cfg.classes not in ("grade", "gland"):
        raise ConfigError("encoder must be frozen|finetuned and classes grade|gland")
    return cfg


@dataclass
class GlandImage:
    name: str
    rgb: np.ndarray  #: H×W×3 uint8 at the working resolution
    labels: np.ndarray  #: H×W int32 instances
    grade: str  #: benign | malignant | "" (unknown)
    patient: str


def _read_grades(data_dir: Path) -> dict[str, tuple[str, str]]:
    for folder in (data_dir, data_dir.parent):
        path = folder / "grade.csv"
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                return {r["name"]: (r.get("grade_glas", "").strip(), r.get("patient_id", "").strip())
                        for r in csv.DictReader(f)}
    return {}


def load_gland_images(data_dir: str | Path, data_mpp: float, mpp: float) -> list[GlandImage]:
    """Every ``<id>.png`` with its ``<id>_label.tif`` in ``data_dir``, resampled to ``mpp``."""
    import tifffile
    from PIL import Image

    from histosam.tasks.nuclei import resample_labels, resample_rgb

    data_dir = Path(data_dir)
    grades = _read_grades(data_dir)
    out = []
    for png in sorted(data_dir.glob("*.png")):
        label_path = png.with_name(f"{png.stem}_label.tif")
        if not label_path.is_file():
            continue
        rgb = np.asarray(Image.open(png).convert("RGB"))
        lab = np.asarray(tifffile.imread(label_path)).astype(np.int32)
        if lab.shape != rgb.shape[:2]:
            raise DataError(f"{png}: image and labels differ in shape")
        small = resample_rgb(rgb, data_mpp / mpp)
        grade, patient = grades.get(png.stem, ("", png.stem))
        out.append(GlandImage(png.stem, small, resample_labels(lab, small.shape[:2]).astype(np.int32), grade,
                              patient or png.stem))
    if not out:
        raise DataError(f"no <id>.png + <id>_label.tif pairs in {data_dir}")
    return out


def split_by_patient(images: list[GlandImage], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train names, val names)``: whole patients held out (about ``fraction`` of the images), both grades in
    the validation set when the data has both."""
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list[GlandImage]] = {}
    for im in images:
        by_patient.setdefault(im.patient, []).append(im)
    patients = sorted(by_patient)
    rng.shuffle(patients)
    target = max(1, round(fraction * len(images)))
    val: list[str] = []
    grades_seen: set[str] = set()
    for p in patients:  # first one patient of each grade, then fill up
        g = by_patient[p][0].grade
        if g not in grades_seen and len(val) < target:
            grades_seen.add(g)
            val += [im.name for im in by_patient[p]]
    for p in patients:
        if len(val) >= target:
            break
        if by_patient[p][0].name not in val:
            val += [im.name for im in by_patient[p]]
    train = [im.name for im in images if im.name not in val]
    return train, sorted(val)


def gland_targets(labels: np.ndarray, class_index: int, n_classes: int, border: int = 3) -> np.ndarray:
    """Targets ``(K+1)×H×W`` float32 at the labels' grid: one-hot class (``class_index`` for every region) and the
    interior (region pixels farther than ``border`` px, in the chessboard metric, from any other id, background
    included)."""
    k = n_classes
    t = np.zeros((k + 1, *labels.shape), np.float32)
    fg = labels > 0
    t[0] = ~fg
    t[class_index] = fg
    from scipy import ndimage as ndi

    size = 2 * border + 1
    hi = ndi.maximum_filter(labels, size=size, mode="nearest")
    lo = ndi.minimum_filter(labels, size=size, mode="nearest")
    t[k] = fg & (hi == labels) & (lo == labels)
    return t


def _class_index(grade: str, names: list[str]) -> int:
    if names == GRADE_CLASSES:
        return 2 if grade == "malignant" else 1
    return 1


def _batch(rng: np.random.Generator, images: list[GlandImage], cfg: TissueTrainConfig, names: list[str]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(frames B×3×S×S float 0–255, targets B×(K+1)×S/2×S/2, valid B×1×S/2×S/2)``."""
    s = cfg.frame
    k = len(names)
    frames = torch.zeros(cfg.batch_size, 3, s, s)
    targets = torch.zeros(cfg.batch_size, k + 1, s // 2, s // 2)
    valid = torch.zeros(cfg.batch_size, 1, s // 2, s // 2)
    for b in range(cfg.batch_size):
        im = images[int(rng.integers(len(images)))]
        rgb, lab = im.rgb, im.labels
        scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        if abs(scale - 1) > 0.02:
            from histosam.tasks.nuclei import resample_labels, resample_rgb

            rgb = resample_rgb(rgb, scale)
            lab = resample_labels(lab, rgb.shape[:2])
        h, w = lab.shape
        # a crop of up to the frame; at times a smaller one, as at the image's bottom/right border at inference
        ch = min(h, s if rng.random() < 0.8 else int(rng.integers(s // 2, s + 1)))
        cw = min(w, s if rng.random() < 0.8 else int(rng.integers(s // 2, s + 1)))
        r = int(rng.integers(0, h - ch + 1))
        c = int(rng.integers(0, w - cw + 1))
        a, y = rgb[r:r + ch, c:c + cw], lab[r:r + ch, c:c + cw]
        kk = int(rng.integers(4))
        a, y = np.rot90(a, kk), np.rot90(y, kk)
        if rng.random() < 0.5:
            a, y = a[:, ::-1], y[:, ::-1]
        a = a.astype(np.float32)
        # colour jitter: per-channel gain and offset, global contrast
        a = a * rng.uniform(0.9, 1.1, 3) + rng.uniform(-12, 12, 3)
        mean = a.mean()
        a = np.clip((a - mean) * rng.uniform(0.85, 1.15) + mean, 0, 255)
        ah, aw = a.shape[:2]
        frames[b, :, :ah, :aw] = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
        t = gland_targets(np.ascontiguousarray(y), _class_index(im.grade, names), k, cfg.interior_border)
        t2 = t[:, ::2, ::2]
        targets[b, :, : t2.shape[1], : t2.shape[2]] = torch.from_numpy(np.ascontiguousarray(t2))
        valid[b, :, : t2.shape[1], : t2.shape[2]] = 1
    return frames, targets, valid


def tissue_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, alpha: float = 0.125,
                gamma: float = 2.0, eps: float = 1.0) -> torch.Tensor:
    """SAM-Path's loss summed over channels: ``(1 − α)·Dice + α·Focal`` of ``sigmoid(logits)``.

    ``logits, targets: B×C×H×W``; ``valid: B×1×H×W`` (0 = padding, no loss). Dice per channel over the batch,
    ``1 − (2Σpt + eps)/(Σp + Σt + eps)``; focal per channel, the mean over valid pixels of
    ``−(1 − p_t)^γ · log p_t``.
    """
    p = torch.sigmoid(logits.float())
    t = targets.float()
    v = valid.float()
    inter = (p * t * v).sum(dim=(0, 2, 3))
    den = (p * v).sum(dim=(0, 2, 3)) + (t * v).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + eps) / (den + eps)
    ce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = ((1 - p_t) ** gamma * ce * v).sum(dim=(0, 2, 3)) / v.sum().clamp(min=1)
    return ((1 - alpha) * dice + alpha * focal).sum()


def _build(cfg: TissueTrainConfig, names: list[str]):
    from histosam.models.build import build_model
    from histosam.models.heads import SECOND_ENCODER_DEFAULT
    spec = {"classes": names, "colors": [TISSUE_COLORS.get(n, [128, 128, 128]) for n in names], "tokens": 4,
            "mlp_dim": 512, "depth": 2, "second_encoder": dict(SECOND_ENCODER_DEFAULT) if cfg.second_encoder else None}
    model = build_model("nano", instance_decoder=None, image_size=cfg.frame, tissue=spec)
    if cfg.init != "scratch":
        from histosam.registry.loader import load_model

        src = load_model(cfg.init, device="cpu")
        model.image_encoder.load_state_dict(src.image_encoder.state_dict())
        model.prompt_encoder.load_state_dict(src.prompt_encoder.state_dict())
        model.mask_decoder.load_state_dict(src.mask_decoder.state_dict())
    if cfg.init_model:
        from histosam.registry.loader import load_model

        donor = load_model(cfg.init_model, device="cpu")
        if donor.tissue_decoder is None or list(donor.config.tissue.get("classes", [])) != names:
            raise DataError(f"init_model {cfg.init_model} has no tissue head with the classes {names}")
        model.load_state_dict(donor.state_dict())
    model.config.mpp = cfg.mpp
    model.config.name = "histosam-tissue"
    model.config.prompt_window = None
    return model


def _read_state(path: Path) -> dict[str, Any]:
    """A tissue training state (``weights_only``: tensors and plain values, never code). States written before
    they carried histosam's train-state header (session 8's first runs) are read when they hold the keys."""
    from histosam.errors import CheckpointError
    from histosam.train.checkpoint import load_train_state

    try:
        return load_train_state(path)
    except CheckpointError:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - report load_train_state's one-line reason
            obj = None
        if isinstance(obj, dict) and "format" not in obj and {"model", "optimizer", "step", "config"} <= set(obj):
            return obj
        raise


def model_from_state(path: str | Path):
    """The region model of a training state (``latest.pt`` or a copy of it), rebuilt from its config."""
    from dataclasses import replace

    state = _read_state(Path(path))
    cfg = replace(TissueTrainConfig(**state["config"]), init="scratch")
    model = _build(cfg, GRADE_CLASSES if cfg.classes == "grade" else GLAND_CLASSES)
    model.load_state_dict(state["model"])
    return model.eval()


def validate(model, images: list[GlandImage], names: list[str]) -> dict[str, float]:
    """Gland pixel Dice (mean per image) and, with graded classes, the share of images whose gland pixels vote
    for the right grade."""
    from histosam.evaluation.glands import glas_object_metrics
    from histosam.postprocess.regions import region_instances
    from histosam.tasks.tissue import tissue_scores

    model.eval()
    dices, right, f1s = [], [], []
    for im in images:
        scores = tissue_scores(model, im.rgb)
        cmap = scores[: len(names)].argmax(0)
        pred, gt = cmap > 0, im.labels > 0
        dices.append(2 * (pred & gt).sum() / max(1, pred.sum() + gt.sum()))
        f1s.append(glas_object_metrics(im.labels, region_instances(scores, model.config.mpp)[1], hausdorff=False).f1)
        if names == GRADE_CLASSES and pred.any() and im.grade:
            votes = np.bincount(cmap[pred], minlength=3)
            right.append(int(votes[2] > votes[1]) == int(im.grade == "malignant"))
    dice, f1 = float(np.mean(dices)), float(np.mean(f1s))
    return {"gland_dice": dice, "object_f1": f1, "score": (dice + f1) / 2,
            "grade_accuracy": float(np.mean(right)) if right else float("nan")}


def _train_mode(model, cfg: TissueTrainConfig) -> None:
    """Training mode, with the frozen parts' BatchNorm statistics fixed."""
    model.train()
    if cfg.encoder == "frozen":
        model.image_encoder.eval()


def train_tissue(cfg: TissueTrainConfig, log=print) -> dict[str, Any]:
    """Train (or resume) a region model; see the module docstring. Returns a summary."""
    from histosam.registry.formats import save_histosam
    from histosam.train.checkpoint import TRAIN_STATE_FORMAT, TRAIN_STATE_VERSION, save_train_state

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = GRADE_CLASSES if cfg.classes == "grade" else GLAND_CLASSES
    images = load_gland_images(cfg.data_dir, cfg.data_mpp, cfg.mpp)
    train_names, val_names = split_by_patient(images, cfg.val_fraction, cfg.seed)
    train = [im for im in images if im.name in train_names]
    val = [im for im in images if im.name in val_names]
    (out / "split.json").write_text(json.dumps({"train": train_names, "val": val_names}, indent=1))
    model = _build(cfg, names)
    if cfg.encoder == "frozen":
        for p in model.image_encoder.parameters():
            p.requires_grad_(False)
    for p in list(model.prompt_encoder.parameters()) + list(model.mask_decoder.parameters()):
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.iterations, pct_start=0.05)
    step, best = 0, -1.0
    latest = out / "latest.pt"
    if latest.is_file():
        state = _read_state(latest)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best = int(state["step"]), float(state["best"])
        log(f"resumed at step {step} (best validation score {best:.4f})")
    rng = np.random.default_rng(cfg.seed + step)
    _train_mode(model, cfg)
    t0 = time.time()
    logf = open(out / "log.jsonl", "a", encoding="utf-8")
    while step < cfg.iterations:
        frames, targets, valid = _batch(rng, train, cfg, names)
        x = model.preprocess(frames, pad_to=cfg.frame)
        x = x * F.interpolate(valid, scale_factor=2.0)  # padded pixels are 0 after normalisation, as at inference
        emb, _ = model.encode(x)
        logits = model.decode_tissue(emb, x)
        loss = tissue_loss(logits, targets, valid, cfg.alpha, cfg.gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        minutes = round((time.time() - t0) / 60, 2)
        rec: dict[str, Any] = {"step": step, "loss": round(float(loss.detach()), 5), "minutes": minutes}
        done = step >= cfg.iterations or (cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes)
        if step % cfg.val_every == 0 or done:
            metrics = validate(model, val, names)
            _train_mode(model, cfg)
            rec.update(metrics)
            if metrics["score"] > best:  # mean of gland pixel Dice and GlaS object F1
                best = metrics["score"]
                save_histosam(model, out / "best.pt", extra={"train": asdict(cfg), "step": step, **metrics})
            save_train_state(latest, {"format": TRAIN_STATE_FORMAT, "version": TRAIN_STATE_VERSION,
                                      "model": model.state_dict(), "optimizer": opt.state_dict(),
                                      "scheduler": sched.state_dict(), "epoch": 0, "step": step, "best": best,
                                      "torch_rng": torch.get_rng_state(), "config": asdict(cfg)})
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        if step % 10 == 0 or "gland_dice" in rec:
            log(json.dumps(rec))
        if done:
            break
    logf.close()
    return {"step": step, "best_score": best, "best": str(out / "best.pt"), "val": val_names}
