"""The interactive protocols end to end through the real Predictor on a small random model (seconds)."""

from __future__ import annotations

import numpy as np
import pytest

import histosam
from histosam.evaluation.protocols import click_protocol, iterative_prompting
from histosam.models.build import build_model


@pytest.fixture(scope="module")
def predictor():
    import torch

    torch.manual_seed(0)
    return histosam.Predictor(build_model("tiny"), device="cpu", precision="fp32")


def _scene():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    gt = np.zeros((96, 128), np.uint32)
    gt[10:30, 10:35] = 1
    gt[50:80, 60:90] = 2
    gt[40:55, 100:120] = 3
    return img, gt


@pytest.mark.parametrize("start", ["point", "box"])
def test_iterative_prompting_runs_and_is_deterministic(predictor, start):
    img, gt = _scene()
    a = iterative_prompting(predictor, img, gt, start=start, n_iterations=3, seed=7, use_masks=True)
    b = iterative_prompting(predictor, img, gt, start=start, n_iterations=3, seed=7, use_masks=True)
    assert a.n_objects == 3 and len(a.msa) == 3
    assert a.msa == b.msa
    assert all(0.0 <= m <= 1.0 for m in a.msa)


def test_click_protocol_runs_and_is_deterministic(predictor):
    img, gt = _scene()
    a = click_protocol(predictor, img, gt, max_clicks=3)
    b = click_protocol(predictor, img, gt, max_clicks=3)
    assert a.ious.shape == (3, 3)
    np.testing.assert_array_equal(a.ious, b.ious)
    assert np.all((a.ious >= 0) & (a.ious <= 1))
    assert a.spc > 0
