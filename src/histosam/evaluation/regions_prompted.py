"""Prompted region segmentation with and without WSI-SAM context: Dice per region for noisy boxes and for 1, 3, 5,
10 positive points (WSI-SAM's protocol), and Kim et al.'s click protocol (NoC@85/90) for regions.

Every region (a gland instance of at least ``min_area`` working px) is prompted once per prompt kind; the prompts,
the HR frame (centred on the prompts' extent, as :class:`~histosam.inference.context.ContextPredictor` places
it) and the LR frame are the same for every compared setting, drawn from ``numpy.random.default_rng`` seeded by
(seed, image, region, kind). Dice is computed in the HR frame (the region's part inside it against the HR mask).
Settings: ``context`` (the model's context head), ``no-context`` (the same model's mask decoder on the HR frame)
and any other model decoded without context (e.g. the same-budget baseline).

Clicks (after Xu et al. / RITM, :func:`~histosam.evaluation.protocols.next_click`): the HR frame is centred on
the first click (the region's interior); every click goes to the interior of the largest error region in the HR
frame, positive on a false negative, negative on a false positive; clicks accumulate (no mask feed-back); IoU in
the HR frame after each click, NoC@85/90 = clicks until IoU ≥ 0.85/0.90 (``max_clicks`` when never).
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RegionPromptConfig", "Setting", "prompt_dice", "click_ious", "evaluate_regions", "summarise",
           "write_report"]


@dataclass
class RegionPromptConfig:
    box_noise: float = 0.1
    points: tuple[int, ...] = (1, 3, 5, 10)
    boxes: bool = True
    clicks: bool = True
    max_clicks: int = 20
    min_area: int = 30
    seed: int = 42
    batch: int = 8
    max_regions: int | None = None  #: per image (smoke runs)


@dataclass
class Setting:
    name: str
    model: Any
    context: bool
    geometry: Any = field(default=None, repr=False)


def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in keys)])


def _regions(labels: np.ndarray, cfg: RegionPromptConfig) -> list[int]:
    from histosam.train.context import gland_ids

    ids = gland_ids(labels, cfg.min_area)
    return ids[: cfg.max_regions] if cfg.max_regions else ids


def prompt_dice(settings: list[Setting], name: str, rgb: np.ndarray, labels: np.ndarray,
                cfg: RegionPromptConfig) -> list[dict]:
    """Per region and prompt kind, the Dice of every setting: records ``{image, region, prompt, <setting>: dice}``."""
    from histosam.train.context import forward_samples, gland_sample

    g = settings[0].geometry
    grid = 4 * settings[0].model.prompt_encoder.image_embedding_size[0]
    kinds = ([("box", 0)] if cfg.boxes else []) + [("points", k) for k in cfg.points]
    records = []
    for kind in kinds:
        samples, ids = [], _regions(labels, cfg)
        for r in ids:
            rng = _rng(cfg.seed, name, r, kind)
            samples.append(gland_sample(rgb, labels == r, g, grid, kind, rng, cfg.box_noise, 0))
        rows = [{"image": name, "region": r, "prompt": f"{kind[0]}{kind[1] or ''}"} for r in ids]
        for st in settings:
            with torch.no_grad():
                for i in range(0, len(samples), cfg.batch):
                    chunk = samples[i:i + cfg.batch]
                    hr, _ = forward_samples(st.model, chunk, st.geometry, st.context)
                    up = F.interpolate(hr, size=(g.frame,) * 2, mode="bilinear", align_corners=False)[:, 0] > 0
                    for j, (s, p) in enumerate(zip(chunk, up.cpu().numpy())):
                        gt = s["hr_mask"]
                        rows[i + j][st.name] = float(2 * (p & gt).sum() / max(1, p.sum() + gt.sum()))
        records += rows
    return records


def click_ious(setting: Setting, rgb: np.ndarray, labels: np.ndarray, cfg: RegionPromptConfig) -> np.ndarray:
    """IoU in the HR frame after each click, ``n_regions × max_clicks`` (see the module docstring)."""
    from histosam.evaluation.protocols import next_click
    from histosam.inference.context import ContextPredictor, crop_padded

    pred = ContextPredictor(setting.model, context=False, cache_size=2)
    pred.context = setting.context
    pred.set_image(rgb)
    g = pred.geometry
    ids = _regions(labels, cfg)
    out = np.zeros((len(ids), cfg.max_clicks))
    for n, r in enumerate(ids):
        gt = labels == r
        (x, y), _ = next_click(gt, np.zeros_like(gt))
        hr0 = g.hr_origin((x, y))
        m8 = gt.astype(np.uint8)[..., None].repeat(3, -1)
        gf = crop_padded(m8, hr0[0], hr0[1], g.frame, g.frame)[0][..., 0] == 1
        pf = np.zeros_like(gf)
        pts, lbl = [], []
        for k in range(cfg.max_clicks):
            click = next_click(gf, pf)
            if click is None:
                click = ((pts[-1][0] - hr0[0], pts[-1][1] - hr0[1]), lbl[-1])
            pts.append((click[0][0] + hr0[0], click[0][1] + hr0[1]))
            lbl.append(click[1])
            hr, _, _ = pred.decode(hr0, np.array(pts, np.float64), np.array(lbl), None, setting.context)
            t = torch.from_numpy(hr)[None, None]
            pf = F.interpolate(t, size=(g.frame,) * 2, mode="bilinear", align_corners=False)[0, 0].numpy() > 0
            inter, union = (pf & gf).sum(), (pf | gf).sum()
            out[n, k] = inter / union if union else 0.0
    return out


def evaluate_regions(settings: list[Setting], images: list[tuple[str, np.ndarray, np.ndarray]],
                     cfg: RegionPromptConfig, log=print) -> dict[str, Any]:
    """Run both protocols over ``images`` (``(name, rgb, labels)`` at the models' working resolution)."""
    from histosam.inference.context import ContextGeometry

    for st in settings:
        scale = int((st.model.config.context or {}).get("scale", 4))
        st.geometry = ContextGeometry(int(st.model.image_size), scale)
        st.model.eval()
    frames = {st.geometry.frame for st in settings}
    if len(frames) != 1:
        raise ValueError(f"the compared models have different frames {sorted(frames)}")
    records, clicks = [], {st.name: [] for st in settings}
    t0 = time.time()
    for i, (name, rgb, labels) in enumerate(images, 1):
        records += prompt_dice(settings, name, rgb, labels, cfg)
        if cfg.clicks:
            for st in settings:
                clicks[st.name].append(click_ious(st, rgb, labels, cfg))
        log(f"[{i}/{len(images)}] {name}: {len(_regions(labels, cfg))} regions ({time.time() - t0:.0f}s)")
    ious = {k: (np.concatenate(v) if v else np.zeros((0, cfg.max_clicks))) for k, v in clicks.items()}
    return {"config": asdict(cfg), "settings": [st.name for st in settings], "records": records,
            "click_ious": {k: v.tolist() for k, v in ious.items()}, "summary": summarise(records, ious, settings)}


def summarise(records: list[dict], ious: dict[str, np.ndarray], settings: list[Setting]) -> dict[str, Any]:
    from histosam.evaluation.protocols import noc_per_object

    out: dict[str, Any] = {}
    prompts = sorted({r["prompt"] for r in records}, key=lambda p: (p != "box", int(p[6:] or 0)))
    for st in settings:
        row: dict[str, Any] = {}
        for p in prompts:
            vals = [r[st.name] for r in records if r["prompt"] == p and st.name in r]
            row[f"dice_{p}"] = float(np.mean(vals)) if vals else float("nan")
            row[f"n_{p}"] = len(vals)
        iou = ious.get(st.name)
        if iou is not None and len(iou):
            for t in (0.85, 0.90):
                row[f"NoC@{int(t * 100)}"] = float(noc_per_object(iou, t).mean())
                row[f"NoF@{int(t * 100)}"] = float((~(iou >= t).any(axis=1)).mean())
            row["IoU@1"] = float(iou[:, 0].mean())
            row["n_click_regions"] = int(len(iou))
        out[st.name] = row
    return out


def write_report(result: dict[str, Any], out: str | Path, command: str = "") -> Path:
    """``regions.json`` (everything, per-region records included) and ``report.md`` (the summary table)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "regions.json").write_text(json.dumps(result, indent=1))
    summary = result["summary"]
    cols = sorted({c for row in summary.values() for c in row if not c.startswith("n_")},
                  key=lambda c: (not c.startswith("dice_box"), not c.startswith("dice"), c.startswith("No"),
                                 int(c.split("_")[1][6:] or 0) if c.startswith("dice_points") else 0, c))
    lines = ["# Prompted regions with and without context", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += ["| setting | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.4f}" for c in cols) + " |")
    n = next(iter(summary.values()), {})
    lines += ["", "regions per prompt kind: " + ", ".join(f"{k[2:]}={v}" for k, v in n.items() if k.startswith("n_"))]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
