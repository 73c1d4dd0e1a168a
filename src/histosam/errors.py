"""Every exception and warning class of histosam, in one place. Errors meant for users derive from
:class:`HistosamError`: the CLI prints them as one line, without a traceback. Modules import (and re-export)
the classes they raise from here."""


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


# raised by histosam.postprocess.ais
class ParameterError(HistosamError, ValueError):
    """A post-processing or tiling parameter is invalid (wrong name, type or range)."""


# raised by histosam.tiling.engine
class IncompleteObjectError(ParameterError):
    """Raised with ``on_incomplete="error"`` when ``context`` is too small for an object."""


# raised by histosam.tiling.engine
class IncompleteObjectWarning(UserWarning):
    """An object reached the cut border of its chunk's read region: enlarge ``context``."""


# raised by histosam.io.runkey
class RunMismatchError(HistosamError):
    """Outputs (or stored chunks) exist that were made by another model, other parameters or another input."""


# raised by histosam.wsi.store
class StoreMismatchError(RunMismatchError):
    """The chunk store was written with different parameters (use --overwrite or another -o)."""


# raised by histosam.io.atomic
class OutputError(HistosamError):
    """An output folder cannot be created or is not a folder."""


# raised by histosam.limits
class LimitError(HistosamError):
    """A job would exceed a limit (tile size, upsampling, memory, pixel count)."""


# raised by histosam.registry.download
class DownloadCancelled(ModelNotAvailableError):
    """A download was stopped through its ``cancel`` event; nothing was written to the cache."""


# raised by histosam.evaluation.datasets
class DatasetError(HistosamError):
    """An annotated dataset folder or file is missing, malformed or inconsistent."""


# raised by histosam.evaluation.metrics
class MetricInputError(HistosamError):
    """Label images given to a metric are not integer arrays of the same shape."""


# raised by histosam.train.config
class ConfigError(HistosamError):
    """A training configuration is invalid (unknown key, wrong type, bad value)."""


# raised by histosam.train.data
class DataError(HistosamError):
    """Training data are missing or malformed."""


# raised by histosam.wsi.roi
class RoiError(HistosamError):
    """A region of interest cannot be parsed."""


# raised by histosam.wsi.pipeline
class NoTissueWarning(UserWarning):
    """The tissue detector found no tissue: the slide yields empty outputs."""


# raised by histosam.server.imaging
class ImageTooLargeError(ImageError):
    """The decoded image has more pixels than the server accepts."""


# raised by histosam.server.weights
class RequestError(HistosamError):
    """A request the server cannot serve; ``status_code`` is the HTTP status to answer with."""

    status_code = 422


# raised by histosam.server.weights
class WeightsNotFoundError(RequestError):
    status_code = 404


# raised by histosam.server.weights
class NotAllowedError(RequestError):
    status_code = 403


# raised by histosam.server.weights
class ConflictError(RequestError):
    status_code = 409


# raised by histosam.server.weights
class CancelledError(ConflictError):
    pass


# raised by histosam.server.weights
class DownloadTooLargeError(RequestError):
    status_code = 413


# raised by histosam.server.middleware
class BodyTooLargeError(Exception):
    pass


# raised by histosam.wsi.reader
class MissingMppWarning(UserWarning):
    """The slide stores no microns per pixel; :data:`DEFAULT_MPP` is assumed."""


# raised by histosam.wsi.reader
class SampledThumbnailWarning(UserWarning):
    """The slide has no pyramid level near the thumbnail's resolution: the thumbnail is a strided sample."""
