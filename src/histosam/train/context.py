"""Training WSI-SAM's context head on GlaS glands (and the same-budget baseline without context).

Samples: a gland of a training image (the patient split of the region model, ``runs/tissue_A/split.json``) at the
model's working resolution, the image rotated/flipped and colour-jittered; a prompt set, the same kind for the
whole batch: a **noisy box** (HQ-SAM/WSI-SAM's ``box_noise``: centre moved by ``U(−1, 1)·(w/2, h/2)·σ``, size
changed by ``U(−1, 1)·(w, h)·σ``, σ = ``box_noise``) or ``k`` positive **points** drawn uniformly inside the gland
(``k`` uniform in 1..``max_points``). The HR frame is centred on the prompts' extent (as
:class:`~histosam.inference.context.ContextPredictor` places it at inference), jittered by up to ``jitter``
working px, and the concentric LR frame covers a ``scale``-times wider field (padding beyond the image). Targets:
the gland's mask in each frame, area-averaged to the mask decoder's output grid.

Loss (WSI-SAM eq. 1): ``λ·L_high + (1 − λ)·L_low``, each Dice + binary cross entropy (λ = 0.5). Trainable: the
context head (``lr``), and the mask decoder (``decoder_lr``) with ``mask_decoder="finetuned"`` (WSI-SAM's setting
is ``"frozen"``); the encoder and prompt encoder are frozen. ``context=False`` trains the **baseline**: the mask
decoder finetuned (``decoder_lr``) on the HR frame alone (Dice + BCE) with the same samples and budget.

Validation: mean Dice per gland of the validation split with seeded noisy boxes, in the HR frame; the best model
goes to ``best.pt`` (histosam format, all roles) and ``context.pt`` (the ``context`` role alone, plus ``masks``
when the decoder was finetuned); the training state to ``latest.pt`` (resumed with ``weights_only=True``); every
step to ``log.jsonl`` and a text log ``train.log``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ContextTrainConfig", "box_noise", "sample_points", "dice_bce", "context_loss", "gland_sample",
           "train_context", "load_split"]


@dataclass
class ContextTrainConfig:
    data_dir: str = "../shared/data/glas/train"
    output_dir: str = "runs/context"
    init: str = "runs/tissue_A/best.pt"  #: the region model (later: histosam-tissue)
    split: str = "runs/tissue_A/split.json"
    context: bool = True  #: False: the no-context baseline (mask decoder finetuned)
    mask_decoder: str = "frozen"  #: frozen | finetuned (with context; the baseline always finetunes it)
    data_mpp: float = 0.62
    scale: int = 4
    lam: float = 0.5
    batch_size: int = 4
    lr: float = 1e-3  #: the context head's
    decoder_lr: float = 1e-4  #: the mask decoder's, when it trains (the baseline, or mask_decoder="finetuned")
    weight_decay: float = 1e-4
    iterations: int = 2000
    val_every: int = 100
    val_glands: int = 200  #: validation glands (seeded subset; 0 = all)
    box_noise: float = 0.2
    box_fraction: float = 0.5
    max_points: int = 10
    jitter: int = 32
    min_area: int = 30
    max_minutes: float | None = None
    seed: int = 0
    threads: int | None = None


# ------------------------------------------------------------------------------------------------- prompts
def box_noise(box: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """HQ-SAM/WSI-SAM's box noise on ``[x0, y0, x1, y1]``: centre ± ``U(−1,1)·wh/2·σ``, size ± ``U(−1,1)·wh·σ``
    (size kept ≥ 1 px)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    u = rng.uniform(-1, 1, 4)
    cx, cy = cx + u[0] * w / 2 * sigma, cy + u[1] * h / 2 * sigma
    w, h = max(1.0, w + u[2] * w * sigma), max(1.0, h + u[3] * h * sigma)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def sample_points(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` points ``(x, y)`` drawn uniformly from the pixels of ``mask`` (with replacement only when it has
    fewer than ``k`` pixels)."""
    ys, xs = np.nonzero(mask)
    idx = rng.choice(len(ys), size=k, replace=len(ys) < k)
    return np.stack([xs[idx], ys[idx]], 1).astype(np.float64)


def gland_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)


# ------------------------------------------------------------------------------------------------- losses
def dice_bce(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Dice (per map, mean over the batch) + binary cross entropy (mean) of ``B×1×H×W`` logits and soft
    targets; Dice = ``1 − (2Σpt + eps)/(Σp + Σt + eps)``, p = sigmoid(logits)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits.float(), target.float())


def context_loss(hr_logits: torch.Tensor, hr_target: torch.Tensor, lr_logits: torch.Tensor,
                 lr_target: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """WSI-SAM's ``λ·L_high + (1 − λ)·L_low`` with ``L = Dice + BCE`` (:func:`dice_bce`)."""
    return lam * dice_bce(hr_logits, hr_target) + (1 - lam) * dice_bce(lr_logits, lr_target)


# ------------------------------------------------------------------------------------------------- data
def load_split(path: str | Path) -> tuple[list[str], list[str]] | None:
    p = Path(path)
    if not p.is_file():
        return None
    d = json.loads(p.read_text())
    return list(d["train"]), list(d["val"])


def gland_ids(labels: np.ndarray, min_area: int) -> list[int]:
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return [int(i) for i, c in zip(ids, counts) if c >= min_area]


def _down(t: np.ndarray, k: int) -> np.ndarray:
    h, w = t.shape
    return t.reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def gland_sample(rgb: np.ndarray, mask: np.ndarray, geometry, grid: int, prompt: tuple[str, int],
                 rng: np.random.Generator, box_sigma: float, jitter: int) -> dict[str, Any]:
    """One training/evaluation sample for the gland ``mask`` (working px) of ``rgb``: prompts in working
    coordinates, the HR origin, the (rgb, valid) HR and LR patches and the HR/LR targets on the ``grid``² output
    grid. ``prompt``: ``("box", 0)`` or ``("points", k)``."""
    from histosam.inference.context import ImageSource, crop_padded

    kind, k = prompt
    pts = box = None
    if kind == "box":
        box = box_noise(gland_box(mask), rng, box_sigma) if box_sigma > 0 else gland_box(mask)
        xy = box.reshape(2, 2)
    else:
        pts = sample_points(mask, k, rng)
        xy = pts
    c = 0.5 * (xy.min(0) + xy.max(0)) + (rng.integers(-jitter, jitter + 1, 2) if jitter else 0)
    hr0 = geometry.hr_origin(c)
    src = ImageSource(rgb)
    s, sc = geometry.frame, geometry.scale
    hr = src.read(hr0[0], hr0[1], s, 1)
    lr0 = geometry.lr_origin(hr0)
    lr = src.read(lr0[0], lr0[1], s, sc)
    m8 = mask.astype(np.uint8)[..., None].repeat(3, -1)
    hr_t = crop_padded(m8, hr0[0], hr0[1], s, s)[0][..., 0].astype(np.float32)
    lr_t = crop_padded(m8, lr0[0], lr0[1], s * sc, s * sc)[0][..., 0].astype(np.float32)
    hr_t[hr_t == 255] = 0  # white padding of the uint8 crop is outside the image: no gland
    lr_t[lr_t == 255] = 0
    return {"points": pts, "box": box, "hr0": hr0, "hr": hr, "lr": lr,
            "hr_target": _down(hr_t, s // grid), "lr_target": _down(lr_t, s * sc // grid),
            "hr_mask": hr_t > 0}


def _augment(rgb: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    rgb, lab = np.rot90(rgb, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        rgb, lab = rgb[:, ::-1], lab[:, ::-1]
    a = rgb.astype(np.float32) * rng.uniform(0.9, 1.1, 3) + rng.uniform(-12, 12, 3)
    mean = a.mean()
    a = np.clip((a - mean) * rng.uniform(0.85, 1.15) + mean, 0, 255)
    return np.ascontiguousarray(a.astype(np.uint8)), np.ascontiguousarray(lab)


# ------------------------------------------------------------------------------------------------- model
def build_context_model(init: str, scale: int = 4, context: bool = True, device: str = "cpu"):
    """The region model ``init`` with a context head started from its mask decoder (``context=True``)."""
    from histosam.models.context_head import attach_context_head, context_spec
    from histosam.registry.loader import load_model

    model = load_model(init, device=device)
    if context and model.context_decoder is None:
        attach_context_head(model, context_spec(model, scale))
    return model


def _prompt_tensors(samples: list[dict], geometry, frame: str, dev) -> dict[str, torch.Tensor | None]:
    fn = geometry.to_hr if frame == "hr" else geometry.to_lr
    out: dict[str, torch.Tensor | None] = {"coords": None, "labels": None, "boxes": None}
    if samples[0]["points"] is not None:
        out["coords"] = torch.tensor(np.stack([fn(s["points"], s["hr0"]) for s in samples]), dtype=torch.float32,
                                     device=dev)
        out["labels"] = torch.ones(out["coords"].shape[:2], dtype=torch.int64, device=dev)
    if samples[0]["box"] is not None:
        out["boxes"] = torch.tensor(np.stack([geometry.boxes_to(s["box"], s["hr0"], frame) for s in samples]),
                                    dtype=torch.float32, device=dev)
    return out


def forward_samples(model, samples: list[dict], geometry, context: bool):
    """Encode the samples' frames (no gradient through the encoder) and decode: ``(hr_logits, lr_logits|None)``."""
    from histosam.inference.context import frames_tensor

    dev = model.device
    b = len(samples)
    patches = [s["hr"] for s in samples] + ([s["lr"] for s in samples] if context else [])
    with torch.no_grad():
        emb, skips = model.encode(frames_tensor(model, patches))
    hp = _prompt_tensors(samples, geometry, "hr", dev)
    if not context:
        logits, _ = model.decode_masks(emb, hp["coords"], hp["labels"], hp["boxes"], multimask=False)
        return logits, None
    lp = _prompt_tensors(samples, geometry, "lr", dev)
    hr, lr, _ = model.decode_context(emb[:b], [s[:b] for s in skips], emb[b:], [s[b:] for s in skips],
                                     hp["coords"], hp["labels"], hp["boxes"], lp["coords"], lp["boxes"])
    return hr, lr


def _targets(samples: list[dict], key: str, dev) -> torch.Tensor:
    return torch.tensor(np.stack([s[key] for s in samples]), dtype=torch.float32, device=dev)[:, None]


def val_samples(images, geometry, grid: int, cfg: ContextTrainConfig) -> list[dict]:
    rng = np.random.default_rng(12345)
    out = []
    for im in images:
        for g in gland_ids(im.labels, cfg.min_area):
            out.append(gland_sample(im.rgb, im.labels == g, geometry, grid, ("box", 0), rng, cfg.box_noise, 0))
    if cfg.val_glands and len(out) > cfg.val_glands:
        keep = np.sort(np.random.default_rng(0).choice(len(out), cfg.val_glands, replace=False))
        out = [out[i] for i in keep]
    return out


def validate(model, samples: list[dict], geometry, context: bool, batch: int = 8) -> float:
    """Mean Dice per gland in the HR frame (logits upsampled to the frame)."""
    model.eval()
    dices = []
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            chunk = samples[i:i + batch]
            hr, _ = forward_samples(model, chunk, geometry, context)
            up = F.interpolate(hr, size=(geometry.frame,) * 2, mode="bilinear", align_corners=False)[:, 0] > 0
            for s, p in zip(chunk, up.cpu().numpy()):
                g = s["hr_mask"]
                dices.append(2 * (p & g).sum() / max(1, p.sum() + g.sum()))
    return float(np.mean(dices)) if dices else float("nan")


def learning_rate(base: float, step: int, total: int, warmup: int = 50) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``base`` at ``total`` (a function of the
    step alone, so a resumed run may change ``iterations``)."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t)))


def _param_groups(model, cfg: ContextTrainConfig) -> list[dict[str, Any]]:
    """Parameter groups (each with its ``base_lr``): the context head at ``lr``, the mask decoder at
    ``decoder_lr`` when it trains; everything else frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    groups = []
    if cfg.context:
        groups.append((model.context_decoder, cfg.lr))
    if not cfg.context or cfg.mask_decoder == "finetuned":
        groups.append((model.mask_decoder, cfg.decoder_lr))
    out = []
    for module, lr in groups:
        params = list(module.parameters())
        for p in params:
            p.requires_grad_(True)
        out.append({"params": params, "lr": lr, "base_lr": lr})
    return out


def _train_mode(model) -> None:
    model.eval()  # the encoder's BatchNorm statistics stay fixed; the decoder/head have no batch statistics


def train_context(cfg: ContextTrainConfig, log=print) -> dict[str, Any]:
    """Train (or resume) the context head or the no-context baseline; see the module docstring."""
    from histosam.inference.context import ContextGeometry
    from histosam.registry.formats import save_histosam
    from histosam.train.checkpoint import load_train_state, save_train_state
    from histosam.train.tissue import load_gland_images, split_by_patient

    if cfg.mask_decoder not in ("frozen", "finetuned"):
        raise ValueError(f"mask_decoder must be 'frozen' or 'finetuned', got {cfg.mask_decoder!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    textlog = open(out / "train.log", "a", encoding="utf-8")

    def say(msg: str) -> None:
        textlog.write(msg + "\n")
        textlog.flush()
        log(msg)

    torch.manual_seed(cfg.seed)
    model = build_context_model(cfg.init, cfg.scale, cfg.context)
    mpp = float(model.config.mpp or 1.24)
    geometry = ContextGeometry(int(model.image_size), cfg.scale)
    grid = 4 * model.prompt_encoder.image_embedding_size[0]
    images = load_gland_images(cfg.data_dir, cfg.data_mpp, mpp)
    split = load_split(cfg.split) or split_by_patient(images, 0.2, cfg.seed)
    train = [im for im in images if im.name in set(split[0])]
    val = [im for im in images if im.name in set(split[1])]
    (out / "split.json").write_text(json.dumps({"train": split[0], "val": split[1]}, indent=1))
    glands = [(i, g) for i, im in enumerate(train) for g in gland_ids(im.labels, cfg.min_area)]
    vsamples = val_samples(val, geometry, grid, cfg)
    say(f"{'context' if cfg.context else 'baseline (no context)'}: {len(train)} train images ({len(glands)} glands), "
        f"{len(val)} val images ({len(vsamples)} val glands), mpp {mpp}, frame {geometry.frame}, scale {cfg.scale}")
    groups = _param_groups(model, cfg)
    say(f"trainable parameters: {sum(p.numel() for g in groups for p in g['params']):,}")
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    step, best = 0, -1.0
    latest = out / "latest.pt"
    if latest.is_file():
        state = load_train_state(latest)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])
        torch.set_rng_state(state["torch_rng"])
        say(f"resumed at step {step} (best val Dice {best:.4f})")
    rng = np.random.default_rng(cfg.seed + step)
    t0 = time.time()
    logf = open(out / "log.jsonl", "a", encoding="utf-8")
    while step < cfg.iterations:
        _train_mode(model)
        kind = ("box", 0) if rng.random() < cfg.box_fraction else ("points", int(rng.integers(1, cfg.max_points + 1)))
        samples = []
        for _ in range(cfg.batch_size):
            i, g = glands[int(rng.integers(len(glands)))]
            rgb, lab = _augment(train[i].rgb, train[i].labels, rng)
            samples.append(gland_sample(rgb, lab == g, geometry, grid, kind, rng, cfg.box_noise, cfg.jitter))
        hr, lr = forward_samples(model, samples, geometry, cfg.context)
        dev = hr.device
        if cfg.context:
            loss = context_loss(hr, _targets(samples, "hr_target", dev), lr, _targets(samples, "lr_target", dev),
                                cfg.lam)
        else:
            loss = dice_bce(hr, _targets(samples, "hr_target", dev))
        for group in opt.param_groups:
            group["lr"] = learning_rate(group["base_lr"], step, cfg.iterations)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        rec: dict[str, Any] = {"step": step, "loss": round(float(loss.detach()), 5),
                               "prompt": f"{kind[0]}{kind[1] or ''}", "minutes": round((time.time() - t0) / 60, 2)}
        done = step >= cfg.iterations or (cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes)
        if step % cfg.val_every == 0 or done:
            dice = validate(model, vsamples, geometry, cfg.context)
            rec["val_box_dice"] = round(dice, 5)
            if dice > best:
                best = dice
                meta = {"train": asdict(cfg), "step": step, "val_box_dice": dice}
                save_histosam(model, out / "best.pt", extra=meta)
                tuned = not cfg.context or cfg.mask_decoder == "finetuned"
                roles = (("context",) if cfg.context else ()) + (("masks",) if tuned else ())
                save_histosam(model, out / ("context.pt" if cfg.context else "masks.pt"), extra=meta, roles=roles)
            save_train_state(latest, {"format": "histosam-train-state", "version": 1, "model": model.state_dict(),
                                      "optimizer": opt.state_dict(), "scheduler": {"kind": "warmup-cosine"}, "epoch": 0,
                                      "step": step, "best": best, "torch_rng": torch.get_rng_state(),
                                      "config": asdict(cfg)})
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        if step % 10 == 0 or "val_box_dice" in rec:
            say(json.dumps(rec))
        if done:
            break
    logf.close()
    textlog.close()
    return {"step": step, "best_val_box_dice": best, "best": str(out / "best.pt"), "context": cfg.context}
