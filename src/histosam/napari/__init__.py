"""histosam in napari (``pip install "histosam[napari]"``; npe2 manifest ``histosam/napari.yaml``).

Widgets (Plugins → histosam): **Annotator** (prompts → current object → commit, iterative correction) and
**Automatic segmentation** (AIS / AMG, typed nuclei); a reader for whole slides (SVS, OME-TIFF, tiled TIFF) as a
lazy multiscale image; a writer from Labels to QuPath GeoJSON (+ measurement table); the bundled example as
sample data. The logic lives in plain classes and functions (:mod:`._annotator`, :mod:`._automatic`,
:mod:`._region`) testable without a display; the ``_widgets_*`` modules are thin Qt glue. Importing this package
imports neither napari nor Qt.
"""
