"""Tile grid and streaming chunk engine: the engine must equal untiled post-processing of stitched maps."""

import warnings

import numpy as np
import pytest
from skimage.draw import disk

from histosam.errors import HistosamError
from histosam.postprocess.ais import AISParams, watershed_from_maps
from histosam.postprocess.targets import distance_maps_from_labels
from histosam.tiling.engine import (
    IncompleteObjectError,
    IncompleteObjectWarning,
    iter_ais_chunks,
    paste_chunk,
    segment_array,
)
from histosam.tiling.grid import Box, TileGrid


def _scene(shape, n, seed):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        rr, cc = disk((rng.integers(0, shape[0]), rng.integers(0, shape[1])), rng.uniform(2.5, 11), shape=shape)
        lab[rr, cc] = k
    maps = distance_maps_from_labels(lab) + rng.normal(0, 0.05, (3,) + shape).astype(np.float32)
    return maps


def _coord_image(shape):
    """uint8 image whose top-left pixel of any crop tells the crop's position (up to 4096 px)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return np.stack([rr & 255, cc & 255, ((rr >> 8) << 4) | (cc >> 8)], -1).astype(np.uint8)


def _where(tile):
    p = tile[0, 0].astype(int)
    return p[0] + 256 * (p[2] >> 4), p[1] + 256 * (p[2] & 15)


def _fake_predictor(maps, calls=None):
    def predict(tiles):
        assert tiles.dtype == np.uint8 and tiles.ndim == 4
        if calls is not None:
            calls.append(tiles.shape)
        out = []
        for t in tiles:
            r, c = _where(t)
            out.append(maps[:, r : r + t.shape[0], c : c + t.shape[1]])
        return np.stack(out)

    return predict


def same_partition(a, b):
    if not np.array_equal(a > 0, b > 0):
        return False
    m = a > 0
    pairs = np.unique(np.stack([a[m], b[m]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_grid_boxes_partition_and_halo():
    g = TileGrid((1000, 700), tile=384, halo=64)
    assert g.grid_shape == (3, 2) and len(g) == 6
    assert g[0].inner == Box(0, 0, 384, 384) and g[0].outer == Box(0, 0, 448, 448)
    assert g[3].inner == Box(384, 384, 768, 700) and g[3].outer == Box(320, 320, 832, 700)
    cover = np.zeros((1000, 700), int)
    for t in g:
        cover[t.inner.slices] += 1
        assert g.tile_of(t.inner.r1 - 1, t.inner.c1 - 1) == t.index
    assert (cover == 1).all()
    assert g.tiles_covering(Box(383, 383, 385, 385)) == [0, 1, 2, 3]
    with pytest.raises(HistosamError):
        TileGrid((10, 10), tile=0)


SHAPE = (300, 340)
MAPS = _scene(SHAPE, 260, seed=7)
IMAGE = _coord_image(SHAPE)
REF = watershed_from_maps(MAPS)


@pytest.mark.parametrize(
    "tile,halo,chunk,context,completeness",
    [
        (64, 8, 100, 32, "component"),
        (100, 0, 128, 16, "component"),
        (128, 32, 97, 24, "component"),
        (37, 5, 61, 40, "component"),
        (512, 64, 1024, 64, "component"),  # single tile and chunk
        (64, 16, 150, 48, "object"),
        (80, 10, 70, 40, "object"),
        (300, 0, 340, 8, "component"),
    ],
)
def test_engine_equals_untiled(tile, halo, chunk, context, completeness):
    seg = segment_array(
        IMAGE,
        _fake_predictor(MAPS),
        tile=tile,
        halo=halo,
        chunk=chunk,
        context=context,
        completeness=completeness,
        batch_size=3,
    )
    assert seg.dtype == np.uint32
    assert same_partition(seg, REF)
    assert np.array_equal(np.unique(seg), np.arange(REF.max() + 1))  # consecutive ids, same count


def test_min_size_and_thresholds_through_engine():
    params = AISParams(min_size=60, center_distance_threshold=0.4, distance_smoothing=1.0)
    ref = watershed_from_maps(MAPS, params=params)
    seg = segment_array(IMAGE, _fake_predictor(MAPS), tile=90, halo=10, chunk=110, context=32, params=params.to_dict())
    assert same_partition(seg, ref) and seg.max() == ref.max()


def test_tile_dependent_predictions_match_stitched_reference():
    """A predictor whose output depends on the tile (like a real network); reference = stitched maps."""

    def predict(tiles):
        base = _fake_predictor(MAPS)(tiles)
        h = tiles.shape[1]
        ramp = np.linspace(-0.2, 0.2, h, dtype=np.float32)[None, :, None]
        return base + ramp  # halo-dependent: the same pixel gets different values in different tiles

    grid = TileGrid(SHAPE, 64, 12)
    stitched = np.empty_like(MAPS)
    for t in grid:
        o = t.outer
        out = predict(IMAGE[o.slices][None])[0]
        stitched[(slice(None),) + t.inner.slices] = out[(slice(None),) + t.inner.local_to(o)]
    ref = watershed_from_maps(stitched)
    seg = segment_array(IMAGE, predict, tile=64, halo=12, chunk=90, context=24)
    assert same_partition(seg, ref)


def test_ids_follow_chunk_then_first_pixel_order_and_deterministic():
    kw = dict(tile=64, halo=8, chunk=128, context=32)
    a = segment_array(IMAGE, _fake_predictor(MAPS), **kw)
    b = segment_array(IMAGE, _fake_predictor(MAPS), batch_size=1, cache_mb=0.0, **kw)
    assert np.array_equal(a, b)
    chunks = TileGrid(SHAPE, 128)
    firsts = []
    for i in range(1, int(a.max()) + 1):
        r, c = np.argwhere(a == i)[0]
        firsts.append((chunks.tile_of(r, c), r, c))
    assert firsts == sorted(firsts)


def test_iterator_results_and_batching():
    calls = []
    res = list(
        iter_ais_chunks(
            lambda r, c, h, w: IMAGE[r : r + h, c : c + w],
            SHAPE,
            _fake_predictor(MAPS, calls),
            tile=64,
            halo=8,
            chunk=128,
            context=32,
            batch_size=4,
        )
    )
    assert [r.index for r in res] == list(range(len(TileGrid(SHAPE, 128))))
    assert max(s[0] for s in calls) == 4
    n_tiles = len(TileGrid(SHAPE, 64))
    assert sum(s[0] for s in calls) == n_tiles  # each tile predicted once (cache large enough)
    out = np.zeros(SHAPE, np.uint32)
    n = 0
    for r in res:
        assert r.labels.dtype == np.uint32 and r.bboxes.shape == (r.n, 4) and r.n_incomplete == 0
        for i in range(r.n):
            assert r.box.contains(*r.first_pixels[i])
            assert (r.labels == i + 1).sum() == r.areas[i]
        paste_chunk(out, r, n)
        n += r.n
    assert same_partition(out, REF)


def test_small_context_is_detected():
    kw = dict(tile=64, halo=8, chunk=100, context=2)
    with pytest.warns(IncompleteObjectWarning):
        segment_array(IMAGE, _fake_predictor(MAPS), on_incomplete="warn", **kw)
    with pytest.raises(IncompleteObjectError):
        segment_array(IMAGE, _fake_predictor(MAPS), on_incomplete="error", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg = segment_array(IMAGE, _fake_predictor(MAPS), on_incomplete="enlarge", **kw)
    assert same_partition(seg, REF)


def test_tile_filter_skips_tiles_as_background():
    skip = Box(0, 0, 128, 128)

    def keep(outer):
        return outer.intersect(skip) is None

    calls = []
    seg = segment_array(IMAGE, _fake_predictor(MAPS, calls), tile=64, halo=0, chunk=128, context=32, tile_filter=keep)
    masked = MAPS.copy()
    masked[0, :128, :128], masked[1:, :128, :128] = 0, 1
    assert same_partition(seg, watershed_from_maps(masked))


def test_bad_inputs():
    with pytest.raises(HistosamError):
        segment_array(IMAGE[..., 0], _fake_predictor(MAPS))
    with pytest.raises(HistosamError, match="predict_maps"):
        segment_array(IMAGE, lambda t: np.zeros((t.shape[0], 3, 5, 5), np.float32), tile=64, chunk=128)
    with pytest.raises(HistosamError, match="read_region"):
        list(iter_ais_chunks(lambda r, c, h, w: np.zeros((h, w), np.uint8), SHAPE, _fake_predictor(MAPS)))
    with pytest.raises(HistosamError):
        segment_array(IMAGE, _fake_predictor(MAPS), on_incomplete="ignore")
