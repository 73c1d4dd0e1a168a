"""Fixtures of the reliability suite: random model files, the fast map predictor, an HTTP test client."""

from __future__ import annotations

import pytest
from harness import fast_models, make_ctx, make_http_client


@pytest.fixture(scope="session")
def rel_ctx(tmp_path_factory):
    """Random histosam-nano / tiny model files shared by every case."""
    return make_ctx(tmp_path_factory.mktemp("rel-models"))


@pytest.fixture
def fast(rel_ctx):
    """Loaded models predict with the colour-threshold maps (the network is not under test); the corpus's random
    model file is loaded once."""
    with fast_models(rel_ctx):
        yield rel_ctx


@pytest.fixture(scope="module")
def http_client():
    with make_http_client() as client:
        yield client
