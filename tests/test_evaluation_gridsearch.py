import numpy as np

from histosam.evaluation.gridsearch import grid_search
from histosam.postprocess.targets import distance_maps_from_labels


def _discs(shape=(96, 96)):
    labels = np.zeros(shape, np.uint32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i, (r, c) in enumerate([(20, 20), (20, 60), (60, 30), (70, 75)], start=1):
        labels[(yy - r) ** 2 + (xx - c) ** 2 <= 81] = i
    return labels


def test_grid_search_picks_the_best_combination():
    gt = _discs()
    maps = distance_maps_from_labels(gt).astype(np.float32)
    grid = {"min_size": (0, 1000), "center_distance_threshold": (0.5,)}
    best, rows = grid_search([maps], [gt], grid)
    assert len(rows) == 2
    by_size = {r["min_size"]: r["msa"] for r in rows}
    assert by_size[1000] == 0.0  # every nucleus (area 253 px) removed
    assert by_size[0] > 0.9
    assert best.min_size == 0
