"""Saved embeddings (``Predictor.set_image(..., embedding_path=...)``): reused for the same image and weights only."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from histosam import Predictor
from histosam.models.build import build_model
from histosam.models.param_cache import weights_fingerprint


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((120, 150, 3), 225, np.uint8)
    img[40:80, 50:100] = (110, 50, 140)
    return np.clip(img.astype(int) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)


def _tiny(seed: int):
    torch.manual_seed(seed)
    return build_model("tiny")


def _no_encoder(model):
    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran although the embedding file matches")

    model.encode = refuse
    return model


def test_embedding_file_is_reused_only_for_the_same_image_and_weights(tmp_path):
    path = tmp_path / "emb.pt"
    image = _image(0)
    first = Predictor(_tiny(0), device="cpu")
    first.set_image(image, embedding_path=path)
    assert path.exists()
    expected = first.predict(points=[[70, 60]], multimask=True)

    # same weights in another model object (as after loading the checkpoint again): loaded, encoder not run
    again = Predictor(_no_encoder(_tiny(0)), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.set_image(image, embedding_path=path)
    got = again.predict(points=[[70, 60]], multimask=True)
    assert np.array_equal(got.masks, expected.masks) and np.allclose(got.scores, expected.scores)

    # other weights under the same model name: recomputed (with a warning), and the file now holds the new ones
    other_model = _tiny(1)
    assert other_model.config.name == first.model.config.name
    assert weights_fingerprint(other_model) != weights_fingerprint(first.model)
    other = Predictor(other_model, device="cpu")
    with pytest.warns(UserWarning, match="another image or model"):
        other.set_image(image, embedding_path=path)
    fresh = Predictor(_tiny(1), device="cpu")
    fresh.set_image(image)
    assert torch.equal(other.get_image_embedding(), fresh.get_image_embedding())
    assert torch.equal(torch.load(path, weights_only=True)["tiles"][0]["embedding"], fresh.get_image_embedding())

    # another image: recomputed
    with pytest.warns(UserWarning, match="another image or model"):
        other.set_image(_image(1), embedding_path=path)


def test_fingerprint_follows_in_place_changes():
    model = _tiny(0)
    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before == weights_fingerprint(_tiny(0))
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert weights_fingerprint(model) != before


def test_in_memory_embeddings_follow_in_place_weight_changes():
    """The same image set again reuses its embedding, unless the weights changed in place since (a training
    step between two evaluations)."""
    model = _tiny(0)
    predictor = Predictor(model, device="cpu")
    image = _image(0)
    predictor.set_image(image)
    first = predictor.get_image_embedding()
    predictor.set_image(image)
    assert predictor.get_image_embedding() is first  # cached
    with torch.no_grad():
        for p in predictor.model.image_encoder.parameters():
            p.mul_(1.5)
    predictor.set_image(image)
    assert not torch.equal(predictor.get_image_embedding(), first)
