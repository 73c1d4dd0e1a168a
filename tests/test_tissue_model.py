"""The shipped region model: it loads by name (hash-checked), carries its classes, colours and post-processing, and
segments a held-out GlaS image (validation split, never trained on) as validated."""

import numpy as np
import pytest

import histosam
from histosam.tasks.tissue import segment_tissue, tissue_classes


def test_histosam_tissue_loads_by_name():
    model = histosam.load_model("histosam-tissue", device="cpu")
    assert tissue_classes(model) == ["background", "benign gland", "malignant gland"]
    assert model.config.mpp == 1.24 and model.config.image_size == 256
    assert len(model.config.tissue["colors"]) == 3
    assert set(model.config.tissue["postprocess"]) == {"interior_threshold", "seed_erosion_um", "min_area_um2"}
    assert model.contracts()["tissue"].produces[-1] == "interior"
    assert model.tissue_decoder.second_encoder is not None
    assert "context" in model.contracts()  # WSI-SAM's head ships with it


def test_nucleus_models_refuse_tissue():
    from histosam.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no tissue head"):
        segment_tissue(np.zeros((64, 64, 3), np.uint8), histosam.load_model("histosam-nano", device="cpu"))


@pytest.mark.data
def test_held_out_gland_image(shared_data):
    import tifffile
    from PIL import Image

    from histosam.evaluation.glands import glas_object_metrics

    folder = shared_data / "glas" / "train"
    if not (folder / "train_2.png").is_file():
        pytest.skip("GlaS is not in ../shared/data")
    rgb = np.asarray(Image.open(folder / "train_2.png").convert("RGB"))
    gt = tifffile.imread(folder / "train_2_label.tif")
    res = segment_tissue(rgb, "histosam-tissue", mpp=0.62)
    assert res.class_map.shape == gt.shape and res.instances.shape == gt.shape
    pred, ref = res.class_map > 0, gt > 0
    dice = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
    assert dice > 0.85  # validation: 0.939 for this image (model card)
    assert glas_object_metrics(gt, res.instances, hausdorff=False).f1 >= 0.75
    names = set(res.instance_classes.values())
    assert names == {"benign gland"}  # train_2 is a benign image (grade.csv)
