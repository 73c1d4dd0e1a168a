"""Per-image jobs: segment one image file and write labels, QuPath GeoJSON, tables and provenance.

``segment_file(path, out_dir, model, ...)`` (:mod:`.image_job`) is what ``histosam segment`` runs per input;
:mod:`.outputs` names the files and decides whether a finished set can be skipped (resume).
"""

from histosam.pipeline.image_job import ENGINE_KEYS, segment_file
from histosam.pipeline.outputs import LARGE_PIXELS, is_complete, output_names, read_outputs

__all__ = ["ENGINE_KEYS", "LARGE_PIXELS", "is_complete", "output_names", "read_outputs", "segment_file"]
