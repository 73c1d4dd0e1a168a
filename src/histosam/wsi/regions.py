"""Tissue regions of a whole slide, streamed chunk by chunk with bounded memory.

Frames: the *working frame* is the slide at the region model's resolution (``model.config.mpp`` µm/px; working
pixel ``(x, y)`` ↔ level-0 ``(x·s, y·s)``, ``s = working mpp / slide mpp``, as
:meth:`~histosam.wsi.reader.SlideReader.read_at_mpp`). Chunks of ``chunk`` working px (a multiple of the model's
tile, so the tile grid is the whole slide's) are read with the model's halo of context; chunks without tissue
(the thumbnail tissue mask) are skipped and stay background. Per chunk: scores → class map (written into a
memory-mapped working-frame raster) → region instances → outlines in level-0 pixels. Regions cut by chunk borders
are merged (:func:`~histosam.measure.regions.merge_cut_regions`).

Memory: one chunk's window and scores, the outlines, and the page cache of the raster (``H×W`` uint8 on disk).
Per-chunk results are kept in ``<out>/.<stem>_tissue_chunks/`` (one ``.npz`` per chunk, written atomically): a
rerun with the same model and settings resumes; the folder is removed once the outputs are written.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from histosam.errors import SlideError

__all__ = ["segment_tissue_slide", "SLIDE_SUFFIXES"]

#: inputs that ``histosam tissue`` treats as slides
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


def _fingerprint(model, settings: dict[str, Any]) -> str:
    import hashlib

    from histosam.registry.formats import state_sha256

    head = state_sha256(model.tissue_decoder.state_dict())
    enc = state_sha256(model.image_encoder.state_dict())
    text = json.dumps({"head": head, "encoder": enc, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def segment_tissue_slide(path: str | os.PathLike, out_dir: str | os.PathLike, model=None, *, mpp: float | None = None,
                         chunk: int = 1024, tile: int | None = None, halo: int | None = None,
                         min_area_um2: float | None = None, tissue_threshold: float = 0.0,
                         progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Segment the tissue regions of one slide; writes ``<stem>_tissue.tif`` (uint8 class map, working frame,
    resolution tags), ``<stem>_regions.geojson`` (QuPath annotations, level-0 pixels), ``<stem>_regions.csv`` and
    ``<stem>_tissue_provenance.json``. Returns the provenance record."""
    from histosam.io.atomic import atomic_path
    from histosam.io.geojson import write_geojson
    from histosam.io.provenance import build_provenance, now_iso, write_provenance
    from histosam.io.tables import write_table
    from histosam.measure.regions import class_areas, merge_cut_regions, region_features, regions_from_labels
    from histosam.postprocess.regions import region_instances
    from histosam.registry.loader import describe, load_model
    from histosam.tasks.tissue import region_params, tissue_classes, tissue_scores, tissue_tiling
    from histosam.wsi.reader import open_slide
    from histosam.wsi.tissue import detect_tissue

    started = now_iso()
    if model is None or isinstance(model, str):
        model = load_model(model or "histosam-tissue")
    names = tissue_classes(model)
    colors = list((model.config.tissue or {}).get("colors") or [])
    tile, halo = tissue_tiling(model, tile, halo)
    chunk = max(tile, tile * round(chunk / tile))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slide = open_slide(path, mpp=mpp)
    stem = Path(path).stem
    try:
        working = float(model.config.mpp or slide.mpp)
        s = working / slide.mpp
        w0, h0 = slide.dimensions
        wk, hk = max(1, math.ceil(w0 / s)), max(1, math.ceil(h0 / s))
        mask = detect_tissue(slide)
        settings = {"chunk": chunk, "tile": tile, "halo": halo, "mpp": slide.mpp, "working_mpp": working,
                    "tissue_threshold": tissue_threshold, **region_params(model, min_area_um2)}
        key = _fingerprint(model, settings)
        store = out / f".{stem}_tissue_chunks"
        store.mkdir(exist_ok=True)
        raster_path = store / "class_map.npy"
        if raster_path.is_file() and (store / key).is_file():
            raster = np.load(raster_path, mmap_mode="r+")
        else:  # a new run (or other settings): start over
            for f in store.iterdir():
                f.unlink()
            raster = np.lib.format.open_memmap(raster_path, mode="w+", dtype=np.uint8, shape=(hk, wk))
            (store / key).write_text(json.dumps(settings))
        grid = [(r, c) for r in range(0, hk, chunk) for c in range(0, wk, chunk)]
        regions = []
        skipped = 0
        t0 = time.perf_counter()
        for n, (r0, c0) in enumerate(grid):
            h, w = min(chunk, hk - r0), min(chunk, wk - c0)
            record = store / f"{r0}_{c0}.npz"
            if record.is_file():
                regions += _load_record(record, n)
            elif mask.fraction(c0, r0, w, h, working) <= tissue_threshold:
                skipped += 1
            else:
                y0, x0 = max(0, r0 - halo), max(0, c0 - halo)
                y1, x1 = min(hk, r0 + h + halo), min(wk, c0 + w + halo)
                rgb = slide.read_at_mpp(x0, y0, x1 - x0, y1 - y0, working)
                scores = tissue_scores(model, rgb, tile, halo, region=(r0 - y0, c0 - x0, r0 - y0 + h, c0 - x0 + w))
                cmap, inst, cls = region_instances(scores, working, **region_params(model, min_area_um2))
                raster[r0:r0 + h, c0:c0 + w] = cmap
                raster.flush()
                found = regions_from_labels(inst, cls, offset=(r0, c0), scale=s, chunk=n,
                                            open_sides=(r0 > 0, c0 > 0, r0 + h < hk, c0 + w < wk))
                _save_record(record, found, atomic_path)
                regions += found
            if progress is not None:
                progress(n + 1, len(grid))
        merged = merge_cut_regions(regions)
        feats, table = region_features(merged, names, colors, slide.mpp, id_namespace=stem)
        outputs = {"class_map": str(out / f"{stem}_tissue.tif"), "geojson": str(out / f"{stem}_regions.geojson"),
                   "table": str(out / f"{stem}_regions.csv")}
        _write_raster(Path(outputs["class_map"]), raster, working)
        write_geojson(outputs["geojson"], feats)
        write_table(outputs["table"], table)
        model_info = describe(model)
        record = build_provenance(
            model_name=model_info.get("name"), model_sha256=model_info.get("sha256"), parameters=settings,
            input_path=path, started=started, outputs=outputs,
            extra={"task": "tissue", "class_names": names, "regions": len(merged),
                   "class_areas_um2": class_areas(table, names), "chunks": len(grid), "chunks_without_tissue": skipped,
                   "seconds": round(time.perf_counter() - t0, 2), "slide_mpp_source": slide.mpp_source})
        write_provenance(out / f"{stem}_tissue_provenance.json", record)
        del raster
        for f in store.iterdir():
            f.unlink()
        store.rmdir()
        return record
    finally:
        slide.close()


def _save_record(path: Path, regions, atomic_path) -> None:
    """One chunk's regions: outlines as concatenated WKB bytes + offsets, class indices (no pickles)."""
    import shapely

    blobs = [bytes(shapely.to_wkb(r.geometry)) for r in regions]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, wkb=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
                     classes=np.array([r.class_index for r in regions], np.int64))


def _load_record(path: Path, chunk: int):
    import shapely

    from histosam.measure.regions import Region

    try:
        with np.load(path, allow_pickle=False) as data:
            buf, offsets, classes = data["wkb"].tobytes(), data["offsets"], data["classes"]
        return [Region(shapely.from_wkb(buf[offsets[i]:offsets[i + 1]]), int(classes[i]), chunk)
                for i in range(len(classes))]
    except Exception as exc:  # noqa: BLE001 - a damaged record is recomputed, never trusted
        path.unlink(missing_ok=True)
        raise SlideError(f"resume record {path} is damaged ({exc}); it was removed: run again") from exc


def _write_raster(path: Path, raster: np.ndarray, mpp: float) -> None:
    import tifffile

    from histosam.io.atomic import atomic_path

    tile = (256, 256) if min(raster.shape) >= 256 else None
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, raster, tile=tile, compression="zlib", photometric="minisblack",
                         resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
