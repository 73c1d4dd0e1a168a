"""Test-only stand-ins so that Meta's ``segment_anything`` and torch-em's UNETR import without their heavy deps.

- ``torchvision``: PyPI's torchvision does not install beside the CPU torch build used here. SAM needs only
  ``transforms.functional.resize``/``to_pil_image`` (a PIL bilinear resize of a PIL image, which is exactly what
  torchvision does for PIL input) and, for the automatic mask generator, ``ops.boxes.batched_nms``/``box_area``,
  given here as a plain greedy NMS. A real torchvision, when installed, is used instead.
- ``torch_em``: its package ``__init__`` imports the whole training stack; the UNETR module itself needs only
  torch, so the two parent packages are registered as bare namespace modules.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import torch


def _greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(boxes[i, 0], boxes[:, 0])
        yy1 = torch.maximum(boxes[i, 1], boxes[:, 1])
        xx2 = torch.minimum(boxes[i, 2], boxes[:, 2])
        yy2 = torch.minimum(boxes[i, 3], boxes[:, 3])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (area[i] + area - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, iou_threshold):
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _greedy_nms(boxes + offsets[:, None], scores, iou_threshold)


def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def install_torchvision_shim() -> bool:
    """Register a minimal ``torchvision`` if the real one is missing; returns True when the shim is used."""
    try:
        import torchvision  # noqa: F401

        return False
    except Exception:  # noqa: BLE001
        pass
    from PIL import Image

    def resize(img, size):
        return img.resize((size[1], size[0]), Image.BILINEAR)

    def to_pil_image(array):
        return Image.fromarray(np.asarray(array))

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize, functional.to_pil_image = resize, to_pil_image
    ops = types.ModuleType("torchvision.ops")
    boxes_mod = types.ModuleType("torchvision.ops.boxes")
    boxes_mod.batched_nms, boxes_mod.box_area = batched_nms, box_area
    ops.boxes = boxes_mod
    transforms.functional = functional
    tv.transforms, tv.ops = transforms, ops
    for name, mod in {"torchvision": tv, "torchvision.transforms": transforms,
                      "torchvision.transforms.functional": functional, "torchvision.ops": ops,
                      "torchvision.ops.boxes": boxes_mod}.items():
        sys.modules[name] = mod
    return True


def import_torch_em_unetr():
    """``torch_em.model.unetr`` without executing ``torch_em/__init__.py`` (None when torch-em is absent)."""
    spec = importlib.util.find_spec("torch_em") if "torch_em" not in sys.modules else None
    if "torch_em.model.unetr" in sys.modules:
        return sys.modules["torch_em.model.unetr"]
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("torch_em")
    pkg.__path__ = [root]
    sys.modules.setdefault("torch_em", pkg)
    model_pkg = types.ModuleType("torch_em.model")
    model_pkg.__path__ = [f"{root}/model"]
    sys.modules.setdefault("torch_em.model", model_pkg)
    return importlib.import_module("torch_em.model.unetr")
