"""histosam.server: a drop-in backend for QuPath's SAM extension (samapi protocol).

- :func:`create_app` builds the FastAPI app from a :class:`ModelBackend` and a :class:`WeightsTable`.
- :class:`HistosamBackend` runs histosam models (embedding cache, one inference lock).
- :func:`running_server` serves an app from a thread (tests, benchmarks); ``histosam serve`` is the CLI.
"""

from histosam.server.app import ServerConfig, create_app
from histosam.server.backend import AutoResult, HistosamBackend, ModelBackend, PromptResult
from histosam.server.runner import running_server, serve_forever
from histosam.server.weights import WeightEntry, WeightsTable

__all__ = [
    "AutoResult",
    "HistosamBackend",
    "ModelBackend",
    "PromptResult",
    "ServerConfig",
    "WeightEntry",
    "WeightsTable",
    "create_app",
    "running_server",
    "serve_forever",
]
