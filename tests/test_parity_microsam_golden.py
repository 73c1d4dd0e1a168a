"""Parity with micro-sam itself: golden outputs recorded by ``scripts/make_microsam_golden.py`` (micro-sam 1.8.14,
bioimage-cpp 0.10.0, torch-em 0.10.9); micro-sam does not need to be installed here.

* small.npz: micro-sam's AIS post-processing (``InstanceSegmentationWithDecoder.generate``) on deterministic
  synthetic decoder maps, for three parameter sets. histosam must give the same labels exactly (up to the
  numbering), untiled and through the tiled chunk engine. This is what pins the smoothing to micro-sam's
  (3σ kernel, mirrored border): scipy's default 4σ / ``reflect`` fails it.
* full.npz (slow): micro-sam's untiled ``automatic_instance_segmentation`` with a random PathoSAM-format vit_b
  checkpoint, recreated here from a seed and checked against the recorded sha256 of its parameters.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from histosam.evaluation.metrics import mean_segmentation_accuracy
from histosam.postprocess.ais import AISParams, watershed_from_maps
from histosam.tiling.engine import segment_array

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "microsam_golden"
SCRIPT = REPO / "scripts" / "make_microsam_golden.py"


def _load_golden_module():
    if not SCRIPT.is_file():
        pytest.skip("scripts/make_microsam_golden.py is not available")
    spec = importlib.util.spec_from_file_location("make_microsam_golden", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def golden():
    return _load_golden_module()


@pytest.fixture(scope="module")
def small():
    with np.load(FIXTURES / "small.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def maps(golden, small):
    m = golden.synthetic_maps(int(small["seed"]), tuple(int(s) for s in small["shape"]))
    # the maps micro-sam saw: any drift of the recipe (or of numpy's PCG64 stream) shows here, not as a label diff
    assert golden.array_sha256(m) == str(small["maps_sha256"])
    return m


def _params(small, i):
    return AISParams(**json.loads(str(small["params"]))[i])


def _assert_same_labels(golden, ref, ours):
    n_ref = len(np.unique(ref)) - 1
    assert n_ref > 100  # the case is not trivial
    assert int(ours.max()) == len(np.unique(ours)) - 1 == n_ref
    assert golden.same_partition(ref, ours)
    assert mean_segmentation_accuracy(ref.astype(np.uint32), ours.astype(np.uint32)) == 1.0


@pytest.mark.parametrize("i", [0, 1, 2], ids=["defaults", "tuned-min-size", "no-smoothing"])
def test_postprocessing_equals_micro_sam_exactly(golden, small, maps, i):
    ours = watershed_from_maps(maps, params=_params(small, i))
    _assert_same_labels(golden, golden.unpack_labels(small[f"labels_{i}"]), ours)


def _position_image(shape):
    """uint8 RGB whose pixel (0, 0) of any crop encodes the crop's (row, col) (up to 4096 px)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return np.stack([rr & 255, cc & 255, ((rr >> 8) << 4) | (cc >> 8)], -1).astype(np.uint8)


def _crop_predictor(maps):
    def predict(tiles):
        out = []
        for t in tiles:
            p = t[0, 0].astype(int)
            r, c = p[0] + 256 * (p[2] >> 4), p[1] + 256 * (p[2] & 15)
            out.append(maps[:, r : r + t.shape[0], c : c + t.shape[1]])
        return np.stack(out)

    return predict


@pytest.mark.parametrize("i", [0, 1])
@pytest.mark.parametrize("chunk,context", [(96, 48), (200, 24)])
def test_tiled_engine_equals_micro_sam_exactly(golden, small, maps, i, chunk, context):
    """Chunks smoothed on their read region ± the kernel radius, cut anywhere, still give micro-sam's labels."""
    image = _position_image(maps.shape[1:])
    ours = segment_array(image, _crop_predictor(maps), tile=128, halo=0, chunk=chunk, params=_params(small, i),
                         context=context, batch_size=4)
    _assert_same_labels(golden, golden.unpack_labels(small[f"labels_{i}"]), ours)


@pytest.mark.slow
def test_vit_b_segment_matches_micro_sam_automatic_instance_segmentation(golden, tmp_path):
    import torch

    import histosam
    from histosam.data import example_image

    with np.load(FIXTURES / "full.npz") as z:
        full = {k: z[k] for k in z.files}
    state = golden.random_state(json.loads(str(full["spec"])), int(full["seed"]))
    assert golden.state_sha256(state) == str(full["state_sha256"]), "the random vit_b checkpoint differs"
    path = tmp_path / "vit_b_pathosam_random.pt"
    torch.save(golden.torch_checkpoint(state), path)
    del state
    image = golden.golden_image(example_image())
    assert golden.array_sha256(image) == str(full["image_sha256"])
    ours = histosam.segment(image, model=path, tile=1024, halo=0, precision="fp32")
    ref = golden.unpack_labels(full["labels"]).astype(np.uint32)
    assert len(np.unique(ref)) - 1 > 200
    assert mean_segmentation_accuracy(ref, ours) >= 0.999
