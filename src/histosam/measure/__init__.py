"""Per-instance polygons and measurements (see :mod:`.polygons`, :mod:`.features`, :mod:`.export`)."""

from histosam.measure.export import instances_to_features
from histosam.measure.features import measure_instances
from histosam.measure.polygons import label_polygons, mask_polygon

__all__ = ["instances_to_features", "label_polygons", "mask_polygon", "measure_instances"]
