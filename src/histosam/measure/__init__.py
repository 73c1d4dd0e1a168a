"""Per-instance outlines and measurements: the one schema of images, slides and the QuPath server.

Convention (every path that writes a polygon or a measurement goes through this package):

- **Outline**: marching squares at level 0.5 on the object's own binary mask, diagonal neighbours joined
  (``skimage.measure.find_contours(..., fully_connected="high")``), holes kept as interior rings, pieces as a
  MultiPolygon, always valid; (x, y) with pixel (r, c) covering ``[c, c+1) × [r, r+1)``; no simplification
  (only vertices in the middle of straight stretches are left out). :func:`label_polygons`, :func:`mask_polygon`
  (:mod:`.polygons`). The QuPath server answers prompts and automasks with these outlines too.
- **Where it is measured**: on the mask the object was segmented on, at the model's working resolution
  (the *measurement frame*). Coordinates and lengths are then mapped to the *output frame* by a scale
  ``s`` = output pixels per working pixel: ``histosam segment``'s output frame is the image's own pixels
  (``s`` = original size / resampled size per axis, 1 when the image is not resampled); ``histosam slide``'s is
  the slide's level-0 pixels (``s = target_mpp / slide_mpp``); the server's is the viewport it was sent (s = 1).
  Stain densities and scores are taken from the working-resolution pixels (the pixels the model saw).
  (``segment --mode amg`` measures the label image it writes: ``histosam.segment`` brings AMG's labels back to
  the image's pixels before they reach the writers.)
- **Measurements**: :func:`measure_objects` / :func:`measure_instances` (:mod:`.features`; its docstring lists
  the columns): ``area_px`` = pixel count × s² (output px²), ``perimeter_px`` = length of the outline's outer
  ring(s) (output px), ``circularity`` = 4π·(outline area) / perimeter², µm values = output-frame values × the
  output frame's µm/px. Images and slides write the same columns with the same names (slides add ``chunk``).
- **Writing**: :func:`instances_to_features` (:mod:`.export`) gives QuPath features (coordinates rounded to
  0.01 px, measurements attached) and the table in one pass.
"""

from histosam.measure.export import instances_to_features, resampled_crop
from histosam.measure.features import measure_instances, measure_objects, table_columns
from histosam.measure.polygons import label_polygons, mask_polygon

__all__ = ["instances_to_features", "label_polygons", "mask_polygon", "measure_instances", "measure_objects",
           "resampled_crop", "table_columns"]
