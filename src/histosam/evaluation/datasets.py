"""Annotated datasets for evaluation: histosam's folder layout and readers for published formats.

histosam layout (one folder per split)::

    <split>/<id>.png          RGB uint8 image (H×W×3)
    <split>/<id>_label.tif    instance labels (0 = background, 1..N), read as uint32 H×W
    <split>/<id>_class.tif    optional per-pixel class map (uint8 H×W, 0 = background)

Published layouts converted here to ``(labels uint32 H×W, classes uint8 H×W)``:

- MoNuSeg XML: one ``<Region>`` per nucleus, ``<Vertex X=.. Y=..>`` polygon with X = column, Y = row.
- CoNSeP ``.mat``: ``inst_map`` (instance ids) and ``type_map`` (classes 1..7, optionally merged to the
  HoVer-Net 4 classes: 1 other, 2 inflammatory, 3 epithelial (3+4), 4 spindle-shaped (5+6+7)).
- PanNuke ``masks.npy``: ``N×256×256×6`` float; channels 0..4 = neoplastic, inflammatory, connective,
  dead, epithelial hold instance ids; channel 5 is background. Class id = channel + 1.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histosam.errors import DatasetError


@dataclass(frozen=True)
class Sample:
    """One annotated image: paths only (load with :func:`load_sample`)."""

    id: str
    image: Path
    label: Path
    classes: Path | None = None


def list_samples(folder: str | Path) -> list[Sample]:
    """Every ``<id>.png`` with its ``<id>_label.tif`` in ``folder``, sorted by id.

    Raises :class:`DatasetError` if the folder has no images or an image has no label file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    pngs = sorted(p for p in folder.glob("*.png") if not p.stem.endswith(("_label", "_class")))
    if not pngs:
        subs = sorted(d.name for d in folder.iterdir() if d.is_dir() and any(d.glob("*_label.tif")))
        hint = f" (split folders found: {', '.join(subs)}; pass one of them)" if subs else ""
        raise DatasetError(f"no <id>.png images in {folder}{hint}")
    out, missing = [], []
    for p in pngs:
        lab = p.with_name(p.stem + "_label.tif")
        if not lab.is_file():
            missing.append(p.name)
            continue
        cls = p.with_name(p.stem + "_class.tif")
        out.append(Sample(p.stem, p, lab, cls if cls.is_file() else None))
    if missing:
        raise DatasetError(f"{len(missing)} image(s) without <id>_label.tif in {folder}: {missing[:5]}")
    return out


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(image uint8 H×W×3, labels uint32 H×W, classes uint8 H×W or None)``."""
    import tifffile
    from PIL import Image

    try:
        with Image.open(sample.image) as im:
            image = np.asarray(im.convert("RGB"))
        labels = np.asarray(tifffile.imread(sample.label))
        classes = None if sample.classes is None else np.asarray(tifffile.imread(sample.classes))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read sample {sample.id}: {exc}") from exc
    labels = np.squeeze(labels)
    if labels.shape != image.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{sample.label.name}: expected integer labels of shape {image.shape[:2]}, "
            f"got {labels.dtype} {labels.shape}"
        )
    if classes is not None:
        classes = np.squeeze(classes)
        if classes.shape != image.shape[:2]:
            raise DatasetError(f"{sample.classes.name}: shape {classes.shape} != image {image.shape[:2]}")
        classes = classes.astype(np.uint8)
    return image, labels.astype(np.uint32), classes


def split_ids(ids, val_fraction: float = 0.2, seed: int = 42) -> tuple[list[str], list[str]]:
    """Deterministic ``(train_ids, val_ids)``: sorted ids shuffled by ``numpy.random.default_rng(seed)``.

    The result depends only on the *set* of ids, ``val_fraction`` and ``seed`` (not on input order).
    ``n_val = round(val_fraction * n)``, at least 1 when ``0 < val_fraction`` and ``n >= 2``, and
    at most ``n - 1`` when ``val_fraction < 1``.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1], got {val_fraction}")
    ids = sorted(set(map(str, ids)))
    n = len(ids)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    if val_fraction < 1 and n >= 2:
        n_val = min(n_val, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


# ------------------------------------------------------------------------------------ MoNuSeg


def read_monuseg_xml(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a MoNuSeg annotation XML to uint32 labels of ``shape`` (rows, cols).

    Each ``<Region>`` is filled with ``skimage.draw.polygon`` (vertex X = column, Y = row) in file
    order, later regions overwriting earlier ones. Regions with < 3 vertices or no pixels are dropped;
    ids are renumbered 1..N in file order over the regions that keep at least one pixel.
    """
    from skimage.draw import polygon

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DatasetError(f"cannot parse MoNuSeg XML {path}: {exc}") from exc
    canvas = np.zeros(shape, np.uint32)
    k = 0
    for region in root.iter("Region"):
        verts = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        if len(verts) < 3:
            continue
        xy = np.asarray(verts)
        rr, cc = polygon(xy[:, 1], xy[:, 0], shape=shape)
        if rr.size == 0:
            continue
        k += 1
        canvas[rr, cc] = k
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(canvas)[0].astype(np.uint32)


# ------------------------------------------------------------------------------------- CoNSeP

#: CoNSeP's 7 original types merged to HoVer-Net's 4 classes
CONSEP_MERGE = np.array([0, 1, 2, 3, 3, 4, 4, 4], np.uint8)


def read_consep_mat(path: str | Path, merge_classes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(inst_map uint32, type_map uint8)`` from a CoNSeP label ``.mat`` (``scipy.io.loadmat``)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except (OSError, ValueError, NotImplementedError) as exc:
        raise DatasetError(f"cannot read CoNSeP .mat {path}: {exc}") from exc
    for key in ("inst_map", "type_map"):
        if key not in mat:
            keys = sorted(k for k in mat if not k.startswith("_"))
            raise DatasetError(f"{path}: no {key!r} (keys: {keys})")
    inst = np.asarray(mat["inst_map"])
    types = np.asarray(mat["type_map"]).astype(np.int64)
    if inst.shape != types.shape:
        raise DatasetError(f"{path}: inst_map {inst.shape} and type_map {types.shape} differ")
    if types.size and (types.min() < 0 or types.max() > 7):
        raise DatasetError(f"{path}: type_map values outside 0..7")
    if merge_classes:
        types = CONSEP_MERGE[types]
    return inst.astype(np.uint32), types.astype(np.uint8)


# ------------------------------------------------------------------------------------ PanNuke

PANNUKE_CLASSES = {1: "neoplastic", 2: "inflammatory", 3: "connective", 4: "dead", 5: "epithelial"}


def pannuke_to_labels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PanNuke masks ``(N,H,W,6)`` or ``(H,W,6)`` -> ``(labels uint32 N×H×W, classes uint8 N×H×W)``.

    Instances are taken per class channel (0..4) and renumbered 1..K per image in channel order, then
    by id; a pixel claimed by two channels keeps the later channel. Channel 5 (background) is ignored.
    """
    masks = np.asarray(masks)
    if masks.ndim == 3:
        masks = masks[None]
    if masks.ndim != 4 or masks.shape[-1] != 6:
        raise DatasetError(f"PanNuke masks must be (N,H,W,6), got {masks.shape}")
    n, h, w, _ = masks.shape
    labels = np.zeros((n, h, w), np.uint32)
    classes = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        k = 0
        for ch in range(5):
            m = np.asarray(masks[i, :, :, ch]).astype(np.int64)
            ids = np.unique(m[m > 0])
            if ids.size == 0:
                continue
            lut = np.zeros(int(ids.max()) + 1, np.uint32)
            lut[ids] = np.arange(k + 1, k + 1 + ids.size, dtype=np.uint32)
            fg = m > 0
            labels[i][fg] = lut[m[fg]]
            classes[i][fg] = ch + 1
            k += ids.size
    return labels, classes


def read_pannuke(images_npy: str | Path, masks_npy: str | Path):
    """``(images uint8 N×256×256×3, labels uint32 N×H×W, classes uint8 N×H×W)`` from a PanNuke fold."""
    try:
        images = np.load(images_npy, mmap_mode="r")
        masks = np.load(masks_npy, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read PanNuke arrays: {exc}") from exc
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[:3] != masks.shape[:3]:
        raise DatasetError(f"PanNuke images {images.shape} do not fit masks {masks.shape}")
    labels, classes = pannuke_to_labels(masks)
    return np.clip(np.asarray(images), 0, 255).astype(np.uint8), labels, classes
