"""histosam.evaluation: metrics, annotated datasets, classical baseline, interactive protocols, reports.

- :mod:`~histosam.evaluation.metrics`: mSA / SA (elf matching), PQ, mPQ, AJI, Dice on label images.
- :mod:`~histosam.evaluation.datasets`: ``<id>.png`` + ``<id>_label.tif`` folders, seeded splits,
  MoNuSeg XML / CoNSeP ``.mat`` / PanNuke ``.npy`` readers.
- :mod:`~histosam.evaluation.baseline`: classical hematoxylin + watershed nucleus segmentation.
- :mod:`~histosam.evaluation.protocols`: PathoSAM iterative prompting and NoC/NoF/SPC click protocol.
- :mod:`~histosam.evaluation.report`: CSV / Markdown tables and PNG plots.

Command line: ``histosam evaluate`` (:mod:`histosam.cli.evaluate`).
"""

from histosam.evaluation.metrics import (
    aggregated_jaccard_index,
    iou,
    matching,
    mean_segmentation_accuracy,
    multiclass_pq,
    panoptic_quality,
    segmentation_accuracy,
)

__all__ = ["aggregated_jaccard_index", "iou", "matching", "mean_segmentation_accuracy", "multiclass_pq",
           "panoptic_quality", "segmentation_accuracy"]
