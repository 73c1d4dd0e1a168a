"""histosam.server: a drop-in backend for QuPath's SAM extension (samapi protocol).

- :func:`create_app` builds the FastAPI app from a :class:`ModelBackend` and a :class:`WeightsTable`.
- :class:`HistosamBackend` runs histosam models (embedding cache, one first-come-first-served inference lock,
  work per request bounded by :class:`WorkLimits`).
- :class:`WeightsPolicy` says what clients may register as weights (paths, URLs, sizes, count).
- :func:`running_server` serves an app from a thread (tests, benchmarks); ``histosam serve`` is the CLI.
"""

from histosam.server.app import ServerConfig, create_app
from histosam.server.backend import AutoResult, HistosamBackend, ModelBackend, PromptResult, WorkLimits
from histosam.server.runner import running_server, serve_forever
from histosam.server.weights import WeightEntry, WeightsPolicy, WeightsTable

__all__ = [
    "AutoResult",
    "HistosamBackend",
    "ModelBackend",
    "PromptResult",
    "ServerConfig",
    "WeightEntry",
    "WeightsPolicy",
    "WeightsTable",
    "WorkLimits",
    "create_app",
    "running_server",
    "serve_forever",
]
