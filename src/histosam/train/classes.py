"""Training the nucleus-class head (PathoSAM's semantic decoder, ``classes`` role) on class-annotated images.

Data: ``<id>.png`` + ``<id>_label.tif`` + ``<id>_class.tif`` (uint8 class id per pixel, 0 = background; CoNSeP's
layout) and ``classes.json`` (``{"0": "background", "1": ...}``) in the data folder.

Strategy (PathoSAM's four, named as in its paper): the image encoder ``frozen`` or ``finetuned`` × the class decoder
``from_scratch`` or ``from_ais`` (its trunk copied from the AIS decoder). The CPU recipe of the embedded model is
``frozen`` + ``from_ais``: only the class decoder trains, the model's AIS output is unchanged bit for bit.
Loss: cross entropy with class weights (inverse square root of the training pixel frequencies). State is saved
atomically to ``output_dir/latest.pt`` (tensors and plain values; resumed with ``weights_only=True``) and the best
head by validation loss to ``best_head.pt``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from histosam.errors import DataError

__all__ = ["ClassTrainConfig", "read_class_sample", "load_class_names", "train_class_head"]


@dataclass
class ClassTrainConfig:
    """Options of :func:`train_class_head` (see the module docstring)."""

    checkpoint: str = "histosam-nano"
    data_dir: str = "../shared/data/consep/train"
    val_ids: list[str] = field(default_factory=lambda: ["train_1", "train_14"])
    output_dir: str = "runs/classes"
    encoder: str = "frozen"  #: frozen | finetuned
    init: str = "from_ais"  #: from_ais | from_scratch
    patch_size: int = 256
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    iterations: int = 3000
    val_every: int = 250
    max_minutes: float | None = None
    seed: int = 0
    threads: int | None = None
    #: start the head from a trained one: a registry name whose model has a class head (``histosam-nano-classes``)
    #: or a ``best_head.pt`` of an earlier run; ``None`` follows ``init``
    init_head: str | None = None
    #: share of patches centred on a nucleus of a class drawn uniformly (class-balanced sampling); 0 = random crops
    balanced: float = 0.0
    #: learning rate: ``constant`` or ``cosine`` (to 0 at ``iterations``)
    schedule: str = "constant"


def load_class_names(data_dir: str | Path) -> tuple[str, ...]:
    """Class names by id from ``classes.json`` beside the images or one folder up (background first)."""
    for folder in (Path(data_dir), Path(data_dir).parent):
        path = folder / "classes.json"
        if path.is_file():
            table = json.loads(path.read_text(encoding="utf-8"))
            return tuple(table[str(i)] for i in range(len(table)))
    raise DataError(f"no classes.json in {data_dir} or its parent")


def read_class_sample(image: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(RGB H×W×3 uint8, instances H×W int64, classes H×W uint8)`` of ``<id>.png``."""
    import tifffile
    from PIL import Image

    rgb = np.asarray(Image.open(image).convert("RGB"))
    inst = np.asarray(tifffile.imread(image.with_name(f"{image.stem}_label.tif"))).astype(np.int64)
    cls = np.asarray(tifffile.imread(image.with_name(f"{image.stem}_class.tif"))).astype(np.uint8)
    if inst.shape != rgb.shape[:2] or cls.shape != rgb.shape[:2]:
        raise DataError(f"{image}: image, labels and class map differ in shape")
    return rgb, inst, cls


def _class_pixels(data: list[tuple[np.ndarray, np.ndarray]], n_classes: int, stride: int = 4
                  ) -> list[np.ndarray]:
    """For each class ≥ 1: ``(image index, row, col)`` of pixels of that class (every ``stride``-th pixel)."""
    out = []
    for k in range(1, n_classes):
        rows = []
        for i, (_, cls) in enumerate(data):
            r, c = np.nonzero(cls[::stride, ::stride] == k)
            rows.append(np.stack([np.full(r.size, i), r * stride, c * stride], axis=1))
        out.append(np.concatenate(rows) if rows else np.zeros((0, 3), int))
    return out


def _patches(rng: np.random.Generator, data: list[tuple[np.ndarray, np.ndarray]], n: int, p: int,
             balanced: float = 0.0, class_pixels: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random ``p×p`` patches with flips / 90° rotations: ``(uint8 n×p×p×3, int64 n×p×p)``. With
    ``balanced`` > 0 that share of the patches is centred (± p/4) on a pixel of a class drawn uniformly."""
    imgs, tgts = [], []
    pools = [q for q in (class_pixels or []) if len(q)]
    for _ in range(n):
        if pools and rng.random() < balanced:
            pool = pools[int(rng.integers(len(pools)))]
            i, y, x = pool[int(rng.integers(len(pool)))]
            rgb, cls = data[int(i)]
            jitter = rng.integers(-p // 4, p // 4 + 1, 2)
            r = int(np.clip(y - p // 2 + jitter[0], 0, rgb.shape[0] - p))
            c = int(np.clip(x - p // 2 + jitter[1], 0, rgb.shape[1] - p))
        else:
            rgb, cls = data[int(rng.integers(len(data)))]
            r = int(rng.integers(0, rgb.shape[0] - p + 1))
            c = int(rng.integers(0, rgb.shape[1] - p + 1))
        a, b = rgb[r:r + p, c:c + p], cls[r:r + p, c:c + p]
        k = int(rng.integers(4))
        a, b = np.rot90(a, k), np.rot90(b, k)
        if rng.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        imgs.append(np.ascontiguousarray(a))
        tgts.append(np.ascontiguousarray(b))
    return np.stack(imgs), np.stack(tgts).astype(np.int64)


def _initial_head(source: str, names, widths):
    """A class head copied from a model with one (registry name or checkpoint) or from a ``best_head.pt``."""
    from histosam.models.nano import NanoClassDecoder
    from histosam.registry.loader import load_model

    head = NanoClassDecoder(names, widths=widths)
    path = Path(source)
    if path.is_file() and path.name.endswith("_head.pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if list(state.get("class_names", [])) != list(names):
            raise DataError(f"{source} has classes {state.get('class_names')}, the data {list(names)}")
        head.load_state_dict(state["state_dict"])
        return head
    donor = load_model(source, device="cpu")
    if donor.class_decoder is None or list(donor.config.class_names) != list(names):
        raise DataError(f"{source} has no class head for the classes {list(names)}")
    head.load_state_dict(donor.class_decoder.state_dict())
    return head


def train_class_head(cfg: ClassTrainConfig, log=print) -> dict[str, Any]:
    """Train the class head of ``cfg.checkpoint``'s model (a nano model with an instance decoder); resumable.
    Returns a summary (best validation loss, iterations done, the head's file)."""
    from histosam.io.atomic import atomic_torch_save
    from histosam.models.nano import NanoClassDecoder
    from histosam.registry.loader import load_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = load_class_names(cfg.data_dir)
    model = load_model(cfg.checkpoint, device="cpu")
    widths = tuple(model.image_encoder.widths[:2])
    if cfg.init_head:
        head = _initial_head(cfg.init_head, names, widths)
    elif cfg.init == "from_ais":
        head = NanoClassDecoder.from_instance_decoder(model.instance_decoder, names, widths)
    else:
        head = NanoClassDecoder(names, widths=widths)
    for p_ in model.parameters():
        p_.requires_grad_(False)
    params = list(head.parameters())
    if cfg.encoder == "finetuned":
        for p_ in model.image_encoder.parameters():
            p_.requires_grad_(True)
        params += list(model.image_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    files = sorted(p for p in Path(cfg.data_dir).glob("*.png"))
    train = [read_class_sample(f) for f in files if f.stem not in cfg.val_ids]
    val = [read_class_sample(f) for f in files if f.stem in cfg.val_ids]
    if not train or not val:
        raise DataError(f"need training and validation images in {cfg.data_dir} (val_ids {cfg.val_ids})")
    freq = np.bincount(np.concatenate([c.ravel() for _, _, c in train]), minlength=len(names)).astype(np.float64)
    weights = torch.tensor((freq.sum() / np.maximum(freq, 1.0)) ** 0.5, dtype=torch.float32)
    weights = weights / weights.mean()
    train_pairs = [(rgb, cls) for rgb, _, cls in train]
    class_pixels = _class_pixels(train_pairs, len(names)) if cfg.balanced > 0 else None
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, cfg.iterations)
                                                                                   / cfg.iterations)))
             if cfg.schedule == "cosine" else None)
    val_rng = np.random.default_rng(12345)
    val_batches = [_patches(val_rng, [(rgb, cls) for rgb, _, cls in val], cfg.batch_size, cfg.patch_size)
                   for _ in range(6)]
    step, best, history = 0, math.inf, []
    latest = out / "latest.pt"
    if latest.exists():
        state = torch.load(latest, map_location="cpu", weights_only=True)
        head.load_state_dict(state["head"])
        if cfg.encoder == "finetuned" and "encoder" in state:
            model.image_encoder.load_state_dict(state["encoder"])
        opt.load_state_dict(state["optimizer"])
        step, best, history = int(state["step"]), float(state["best"]), list(state["history"])
        if sched is not None:
            sched.last_epoch = step
            for g, lr in zip(opt.param_groups, sched.get_lr()):
                g["lr"] = lr
        log(f"resumed at step {step} (best val loss {best:.4f})")

    def run(images: np.ndarray, target: np.ndarray, train_mode: bool) -> torch.Tensor:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        frame = model.preprocess(x, pad_to=cfg.patch_size)
        with torch.set_grad_enabled(train_mode and cfg.encoder == "finetuned"):
            emb, skips = model.encode(frame)
        logits = head(emb, skips, frame)
        return F.cross_entropy(logits, torch.from_numpy(target), weight=weights)

    t0 = time.monotonic()
    model.eval()
    while step < cfg.iterations:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, step]))
        head.train()
        images, target = _patches(rng, train_pairs, cfg.batch_size, cfg.patch_size, cfg.balanced, class_pixels)
        loss = run(images, target, True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        step += 1
        if step % cfg.val_every == 0 or step == cfg.iterations:
            head.eval()
            with torch.no_grad():
                vl = float(np.mean([float(run(a, b, False)) for a, b in val_batches]))
            history.append({"step": step, "train_loss": float(loss.detach()), "val_loss": vl,
                            "minutes": round((time.monotonic() - t0) / 60, 2)})
            log(json.dumps(history[-1]))
            if vl < best:
                best = vl
                atomic_torch_save({"format": "histosam-class-head", "class_names": list(names),
                                   "state_dict": head.state_dict(), "config": asdict(cfg), "step": step,
                                   "val_loss": vl}, out / "best_head.pt")
            state = {"head": head.state_dict(), "optimizer": opt.state_dict(), "step": step, "best": best,
                     "history": history}
            if cfg.encoder == "finetuned":
                state["encoder"] = model.image_encoder.state_dict()
            atomic_torch_save(state, latest)
            if cfg.max_minutes is not None and time.monotonic() - t0 > cfg.max_minutes * 60:
                break
    return {"step": step, "best_val_loss": best, "head": str(out / "best_head.pt"), "history": history}
