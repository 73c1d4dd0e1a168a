"""Exceptions with messages meant for users: the CLI prints them as one line, without a traceback."""


class HistosamError(Exception):
    """Base class of every error histosam raises on purpose."""


class CheckpointError(HistosamError):
    """A checkpoint file cannot be read or does not fit the requested architecture."""


class ImageError(HistosamError):
    """An image cannot be read or converted to the RGB uint8 that the models take."""


class ModelNotAvailableError(HistosamError):
    """A named model is not cached and cannot be downloaded (offline)."""


class SlideError(HistosamError):
    """A whole-slide image cannot be opened or has unusable metadata."""
