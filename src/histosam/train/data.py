"""Training data: annotated folders, a seeded train/val split, random augmented patches.

Folder layout: ``<dir>/<id>.png`` (RGB uint8) + ``<dir>/<id>_label.tif`` (integer instance labels,
0 = background). Several folders may be combined; ids must be unique over all of them.

Every random choice draws from a ``numpy.random.Generator`` passed in. ``PatchDataset`` derives one
per item from ``SeedSequence([seed, epoch, index])``, so a sample depends only on (seed, epoch,
index): the same in the main process and in any DataLoader worker, in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from histosam.errors import DataError
from histosam.train.targets import distance_targets, relabel_instances


@dataclass(frozen=True)
class Sample:
    """One annotated image: ``id`` and the paths of the image and its label file."""

    id: str
    image: Path
    label: Path


def list_samples(dirs: list[str | Path]) -> list[Sample]:
    """All ``<id>.png`` with a matching ``<id>_label.tif`` in ``dirs``, sorted by id."""
    samples: dict[str, Sample] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise DataError(f"data folder not found: {d}")
        for png in sorted(d.glob("*.png")):
            label = png.with_name(f"{png.stem}_label.tif")
            if not label.exists():
                continue
            if png.stem in samples:
                first = samples[png.stem].image.parent
                raise DataError(f"image id {png.stem!r} occurs in two data folders ({first} and {d}); "
                                "ids must be unique")
            samples[png.stem] = Sample(png.stem, png, label)
    if not samples:
        raise DataError(f"no <id>.png + <id>_label.tif pairs found in {[str(d) for d in dirs]}")
    return [samples[k] for k in sorted(samples)]


def split_samples(samples: list[Sample], val_ids: list[str], val_fraction: float = 0.0,
                  seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Train/val split: the ids in ``val_ids``, or else a seeded random ``val_fraction`` (≥ 1 image)."""
    ids = {s.id for s in samples}
    if val_ids:
        missing = sorted(set(val_ids) - ids)
        if missing:
            raise DataError(f"validation id(s) not in the data: {', '.join(missing)}")
        val = [s for s in samples if s.id in set(val_ids)]
    elif val_fraction > 0:
        n_val = max(1, int(round(val_fraction * len(samples))))
        order = np.random.default_rng(seed).permutation(len(samples))
        chosen = set(order[:n_val].tolist())
        val = [s for i, s in enumerate(samples) if i in chosen]
    else:
        val = []
    val_set = {s.id for s in val}
    train = [s for s in samples if s.id not in val_set]
    if not train:
        raise DataError("no training images left after the validation split")
    return train, val


def read_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """``(image H×W×3 uint8 RGB, labels H×W uint32)``."""
    import tifffile
    from PIL import Image

    try:
        img = np.asarray(Image.open(sample.image).convert("RGB"))
        lab = np.asarray(tifffile.imread(sample.label))
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
        raise DataError(f"cannot read {sample.id}: {exc}") from exc
    lab = np.squeeze(lab)
    if lab.shape != img.shape[:2]:
        raise DataError(f"{sample.id}: label shape {lab.shape} differs from image shape {img.shape[:2]}")
    return img, lab.astype(np.uint32)


# ----------------------------------------------------------------------------------------------
# augmentations (numpy, H×W×3 uint8 image / H×W labels)

def random_crop(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator,
                scale_range: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Random ``size×size`` patch with scale jitter.

    A window of ``round(size / s)`` px (``s`` log-uniform in ``scale_range``) is cut at a random
    position (zero padding where the image is smaller), then resized to ``size``: bilinear for the
    image, nearest for the labels. Returns ``(uint8 size×size×3, uint32 size×size)``.
    """
    lo, hi = scale_range
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
    win = max(1, int(round(size / s)))
    h, w = labels.shape
    y0 = int(rng.integers(0, max(h - win, 0) + 1))
    x0 = int(rng.integers(0, max(w - win, 0) + 1))
    img = np.zeros((win, win, 3), np.uint8)
    lab = np.zeros((win, win), np.uint32)
    ch, cw = min(win, h - y0), min(win, w - x0)
    img[:ch, :cw] = image[y0:y0 + ch, x0:x0 + cw]
    lab[:ch, :cw] = labels[y0:y0 + ch, x0:x0 + cw]
    if win != size:
        import torch.nn.functional as F

        t_img = torch.from_numpy(img.transpose(2, 0, 1).copy()).float()[None]
        t_img = F.interpolate(t_img, size=(size, size), mode="bilinear", align_corners=False)
        img = np.clip(np.round(t_img[0].numpy().transpose(1, 2, 0)), 0, 255).astype(np.uint8)
        t_lab = torch.from_numpy(lab.astype(np.float64))[None, None]
        lab = F.interpolate(t_lab, size=(size, size), mode="nearest")[0, 0].numpy().astype(np.uint32)
    return img, lab


def random_flip_rotate(image: np.ndarray, labels: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal/vertical flips and a random multiple of 90° rotation (same for both)."""
    k = int(rng.integers(0, 4))
    flip_v, flip_h = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
    if flip_v:
        image, labels = image[::-1], labels[::-1]
    if flip_h:
        image, labels = image[:, ::-1], labels[:, ::-1]
    image, labels = np.rot90(image, k, axes=(0, 1)), np.rot90(labels, k, axes=(0, 1))
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, hed: float = 0.05,
                  brightness: float = 0.1, contrast: float = 0.15) -> np.ndarray:
    """Stain jitter in HED space (per channel ``x·U(1±hed) + U(±hed)·range``) and brightness/contrast.

    Returns uint8 ``H×W×3``. Any strength 0 turns that part off.
    """
    from skimage.color import hed2rgb, rgb2hed

    out = image.astype(np.float64)
    if hed > 0:
        h = rgb2hed(image)
        rng_scale = np.maximum(h.reshape(-1, 3).max(0) - h.reshape(-1, 3).min(0), 1e-3)
        alpha = rng.uniform(1 - hed, 1 + hed, size=3)
        beta = rng.uniform(-hed, hed, size=3) * rng_scale
        out = hed2rgb(h * alpha + beta) * 255.0
    if contrast > 0:
        c = rng.uniform(1 - contrast, 1 + contrast)
        out = (out - out.mean()) * c + out.mean()
    if brightness > 0:
        out = out + rng.uniform(-brightness, brightness) * 255.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def sample_patch(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, size: int,
                 min_instances: int = 4, min_size: int = 10, augment: bool = True,
                 scale_range: tuple[float, float] = (0.8, 1.25), hed: float = 0.05,
                 brightness: float = 0.1, contrast: float = 0.15,
                 max_tries: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """A random augmented patch with at least ``min_instances`` objects of ≥ ``min_size`` px.

    Retries up to ``max_tries`` crops and keeps the one with the most objects if none qualifies.
    Returns ``(image uint8 size×size×3, labels uint32 size×size)``, labels relabelled 1..N after
    cropping (connected components, objects < ``min_size`` px removed).
    """
    best: tuple[int, np.ndarray, np.ndarray] | None = None
    sr = tuple(scale_range) if augment else (1.0, 1.0)
    for _ in range(max_tries):
        img, lab = random_crop(image, labels, size, rng, sr)
        lab = relabel_instances(lab, min_size)
        n = int(lab.max())
        if best is None or n > best[0]:
            best = (n, img, lab)
        if n >= min_instances:
            break
    _, img, lab = best
    if augment:
        img, lab = random_flip_rotate(img, lab, rng)
        img = colour_jitter(img, rng, hed, brightness, contrast)
    return img, lab


class PatchDataset(torch.utils.data.Dataset):
    """Random patches from in-memory images; ``length`` items per epoch.

    Item: ``(image float32 3×P×P in 0–255, instances int64 P×P, targets float32 3×P×P)``.
    With ``random=False`` (validation) item ``i`` is a fixed centre crop of image ``i``, no
    augmentation.
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], patch_size: int,
                 length: int, seed: int = 0, random: bool = True, min_instances: int = 4,
                 min_size: int = 10, augment: bool = True, scale_range=(0.8, 1.25), hed: float = 0.05,
                 brightness: float = 0.1, contrast: float = 0.15):
        if not images:
            raise DataError("PatchDataset needs at least one image")
        self.images, self.labels = images, labels
        self.patch_size, self.length, self.seed, self.random = patch_size, length, seed, random
        self.kw = dict(min_instances=min_instances, min_size=min_size, augment=augment,
                       scale_range=tuple(scale_range), hed=hed, brightness=brightness, contrast=contrast)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length if self.random else len(self.images)

    def _centre_crop(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img, lab = self.images[i], self.labels[i]
        p = self.patch_size
        h, w = lab.shape
        y0, x0 = max((h - p) // 2, 0), max((w - p) // 2, 0)
        out_i, out_l = np.zeros((p, p, 3), np.uint8), np.zeros((p, p), np.uint32)
        crop_i, crop_l = img[y0:y0 + p, x0:x0 + p], lab[y0:y0 + p, x0:x0 + p]
        out_i[:crop_i.shape[0], :crop_i.shape[1]] = crop_i
        out_l[:crop_l.shape[0], :crop_l.shape[1]] = crop_l
        return out_i, out_l

    def __getitem__(self, index: int):
        if self.random:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))
            i = int(rng.integers(0, len(self.images)))
            img, lab = sample_patch(self.images[i], self.labels[i], rng, self.patch_size, **self.kw)
        else:
            img, lab = self._centre_crop(index)
        inst, targets = distance_targets(lab, self.kw["min_size"])
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
        return image, torch.from_numpy(inst.astype(np.int64)), torch.from_numpy(targets)
