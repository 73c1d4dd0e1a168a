"""Segment one image file and write every output (labels, QuPath GeoJSON, tables, provenance) in one pass.

AIS streams: :func:`histosam.tiling.engine.iter_ais_chunks` yields the nuclei chunk by chunk; each chunk's
objects are mapped to the original image grid, measured, turned into GeoJSON features and pasted into the
label output right away, so nothing goes over the image twice and the GeoJSON never sits in memory.
AMG segments the whole image with :func:`histosam.segment` and goes through the same writers.

Frames: the engine works at the model's resolution (the image resampled by ``mpp / model.config.mpp``, as in
:func:`histosam.segment`); labels, polygons, centroids and areas are always in **original image pixels**
(polygons ``(x, y)``, pixel (r, c) covers ``[c, c+1) × [r, r+1)``). Objects are measured where they were
segmented (the model's frame) and mapped to the original pixels by the scale, as slides are (:mod:`histosam.measure`).
Table row ``id`` = label value = the ``label_id`` measurement of the GeoJSON feature, whose UUID is
``uuid5(namespace, "<stem>:<id>")`` (:func:`histosam.io.geojson.feature` with ``id_namespace=<stem>``); without
resampling ``area_px`` equals the pixel count of that id in the label image.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histosam.errors import HistosamError
from histosam.inference.runtime import release_freed_memory
from histosam.io.atomic import make_dirs, remove_empty_dirs, sweep_temp_files
from histosam.io.geojson import GeoJSONWriter
from histosam.io.images import image_mpp, read_image
from histosam.io.provenance import build_provenance, now_iso, write_provenance
from histosam.io.tables import write_table
from histosam.measure import instances_to_features, measure_instances, resampled_crop
from histosam.pipeline.outputs import (
    LabelSink,
    crop_to_original,
    image_stem,
    output_names,
    read_outputs,
    source_index,
)

__all__ = ["segment_file", "check_params", "ENGINE_KEYS", "run_key", "existing_outputs"]

#: resident size (MiB) above which freed heap memory is handed back after a chunk: below it the kept memory
#: saves page faults (keep_freed_memory), above it the job stays bounded (10,000² image with histosam-nano,
#: 2 cores: peak 5374 MiB in 135.7 s without trimming, 2569 MiB in 140.3 s with this budget).
#: ``HISTOSAM_TRIM_ABOVE_MB`` overrides it.
TRIM_ABOVE_MB = 2048.0


def _trim_budget_mb() -> float:
    value = os.environ.get("HISTOSAM_TRIM_ABOVE_MB", "").strip()
    try:
        return float(value) if value else TRIM_ABOVE_MB
    except ValueError as e:
        raise HistosamError(f"HISTOSAM_TRIM_ABOVE_MB must be a number of MiB, got {value!r}") from e

#: keyword arguments of :func:`~histosam.tiling.engine.iter_ais_chunks` accepted as ``**params``
ENGINE_KEYS = frozenset({"context", "completeness", "on_incomplete", "max_context", "cache_mb"})

PredictMaps = Callable[[np.ndarray], np.ndarray]


def _empty_table(rgb: np.ndarray, with_scores: bool, mpp: float | None) -> pd.DataFrame:
    """The measurement table with its columns but no rows."""
    zero = np.zeros((1, 1), np.uint32)
    return measure_instances(zero, rgb[:1, :1], scores=np.zeros((1, 1)) if with_scores else None, mpp=mpp)


class _Writers:
    """Label sink + streaming GeoJSON + table rows of one image; ``add`` takes one original-frame crop."""

    def __init__(self, names: dict[str, Path], rgb: np.ndarray, mpp: float | None, namespace: str,
                 trim_above_mb: float = TRIM_ABOVE_MB) -> None:
        self.names, self.rgb, self.mpp, self.namespace = names, rgb, mpp, namespace
        self.trim_above_mb = trim_above_mb
        self.tables: list[pd.DataFrame] = []
        self.n = 0
        self.measure_s = 0.0
        self._stack = contextlib.ExitStack()
        self.sink = LabelSink(names["labels"], rgb.shape[:2], mpp)
        self._stack.callback(self.sink.abort)
        self.geojson = GeoJSONWriter(names["geojson"])
        self._stack.callback(self.geojson.abort)
        self.class_names: tuple[str, ...] = ()
        self.class_colors: list[list[int]] = []
        self.class_counts: dict[str, int] = {}

    def add(self, crop: np.ndarray, offset: tuple[int, int], scores: np.ndarray | None,
            measured: dict | None = None, class_probs: np.ndarray | None = None) -> None:
        """Objects of ``crop`` (uint32, local ids 1..m, all present; ``[0, 0]`` at image ``offset``; ``scores`` one
        per id). ``measured``: where they are measured when that is not ``crop`` itself (a resampled image's
        working-frame crop, :func:`histosam.measure.resampled_crop`)."""
        m = int(crop.max(initial=0))
        if m == 0:
            return
        t = time.perf_counter()
        r0, c0 = offset
        h, w = crop.shape
        if measured is None:
            measured = {"labels": crop, "offset": offset, "image": self.rgb[r0:r0 + h, c0:c0 + w], "scores": scores}
        feats, table = instances_to_features(**measured, id_offset=self.n, mpp=self.mpp, id_namespace=self.namespace)
        for f, i in zip(feats, table["id"].tolist()):
            f["properties"].setdefault("measurements", {})["label_id"] = int(i)
        if class_probs is not None and self.class_names:
            self._classify(feats, table, class_probs)
        self.geojson.add(feats)
        self.tables.append(table)
        self.sink.write(r0, c0, np.where(crop > 0, crop + np.uint32(self.n), np.uint32(0)))
        self.n += m
        release_freed_memory(above_mb=self.trim_above_mb)
        self.measure_s += time.perf_counter() - t

    def _classify(self, feats: list[dict], table: pd.DataFrame, probs: np.ndarray) -> None:
        """QuPath classification (name, colour) and class probabilities per nucleus; ``probs`` row i = table row i.
        The class is the argmax over the nucleus classes (background excluded: the nucleus was found by AIS; its
        background probability is kept as a measurement to flag doubtful ones)."""
        names = self.class_names
        best = 1 + np.argmax(probs[:, 1:], axis=1)
        table["class"] = [names[k] for k in best]
        for k, name in enumerate(names):
            table[f"prob_{name}"] = probs[:, k].astype(np.float64)
        for f, k, row in zip(feats, best, probs):
            f["properties"]["classification"] = {"name": names[k], "color": list(self.class_colors[k])}
            meas = f["properties"].setdefault("measurements", {})
            for j, name in enumerate(names):
                meas[f"class probability {name}"] = float(row[j])
            self.class_counts[names[k]] = self.class_counts.get(names[k], 0) + 1

    def finish(self, with_scores: bool, write_parquet: bool) -> None:
        """Write tables and labels, then finalise the GeoJSON (each atomic); a failure removes the tables this call
        wrote (the set is either complete or absent)."""
        table = pd.concat(self.tables, ignore_index=True) if self.tables else _empty_table(
            self.rgb, with_scores, self.mpp)
        written: list[Path] = []
        try:
            for key in ("csv", "parquet") if write_parquet else ("csv",):
                write_table(self.names[key], table)
                written.append(self.names[key])
            self.sink.close()
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        self._stack.pop_all()
        self.geojson.close()

    def abort(self) -> None:
        self._stack.close()  # aborts GeoJSON (nothing at its path) and the label sink


def segment_file(path: str | os.PathLike, out_dir: str | os.PathLike, model: Any = None, mode: str = "ais", *,
                 tile: int | None = None, halo: int | None = None, chunk: int = 1024, batch_size: int = 4,
                 device: str | None = None, precision: str = "auto", mpp: float | None = None,
                 geojson_gz: bool = False, write_parquet: bool = True, overwrite: bool = False,
                 progress: bool = True, predict_maps: PredictMaps | None = None,
                 **params: Any) -> dict[str, Path]:
    """Segment the nuclei of one image file and write its output set (see :mod:`histosam.pipeline.outputs`).

    Args:
        path: image file (PNG/JPEG/TIFF/...; read as ``H×W×3 uint8`` RGB).
        out_dir: output folder (created if missing).
        model: model object, registry name, checkpoint path, or ``None`` (embedded default; with
            ``predict_maps`` and no model, no model is loaded and no resampling happens).
        mode: ``"ais"`` (streamed, chunk by chunk) or ``"amg"``.
        tile, halo, chunk, batch_size, device, precision: as in :func:`histosam.segment`.
        mpp: µm/px of the image: resampling to the model's resolution, µm columns in the table. ``None``: the
            pixel size the file states (OME-TIFF ``PhysicalSizeX``, TIFF resolution tags; see
            :func:`histosam.io.images.image_mpp`), else none (the image is taken to be at the model's resolution).
            The provenance records which (``mpp_source``: ``"given"``, ``"file"`` or ``"none"``).
        geojson_gz: write ``<stem>.geojson.gz`` instead of ``<stem>.geojson``.
        write_parquet: also write ``<stem>_nuclei.parquet``.
        overwrite: recompute even when a complete output set exists (otherwise it is skipped).
        progress: tqdm bar over chunks (stderr).
        predict_maps: replaces the model's map predictor (``uint8 B×h×w×3 -> float32 B×3×h×w``), e.g. a fake
            predictor in tests and benchmarks.
        **params: AIS post-processing overrides, engine options (:data:`ENGINE_KEYS`), or AMG parameters.
    Returns:
        ``{"labels", "geojson", "csv", ["parquet",] "provenance"}`` -> paths.
    Raises:
        ImageError (unreadable/empty image), HistosamError subclasses for bad parameters or models.
    """
    started, t0 = now_iso(), time.perf_counter()
    check_params(mode, params)  # before anything is read or removed
    trim_above_mb = _trim_budget_mb()
    out_dir = Path(out_dir)
    if model is not None or predict_maps is None:
        from histosam.automatic import resolve_model

        model = resolve_model(model, device, require_decoder=(mode == "ais" and predict_maps is None))
    key = run_key(path, model, predict_maps, mode=mode, tile=tile, halo=halo, chunk=chunk, batch_size=batch_size,
                  device=device, precision=precision, mpp=mpp, geojson_gz=geojson_gz, params=params)
    if not overwrite:
        done = existing_outputs(path, out_dir, key, geojson_gz=geojson_gz, write_parquet=write_parquet)
        if done is not None:
            return done
    rgb = read_image(path)
    mpp_source = "given"
    if mpp is None:
        mpp = image_mpp(path)
        mpp_source = "none" if mpp is None else "file"
    read_s = time.perf_counter() - t0
    if model is not None:  # limits (tile, upsampling, memory) before anything is written
        from histosam.automatic import check_job, rescale_factor

        check_job(rgb.shape[:2], rescale_factor(mpp, model), mpp, model, tile=tile, halo=halo, chunk=chunk)
    _check_name_lengths(path, output_names(path, out_dir, shape=rgb.shape[:2], geojson_gz=geojson_gz,
                                           write_parquet=write_parquet))
    created = make_dirs(out_dir)
    sweep_temp_files(out_dir, image_stem(path))  # leftovers of an interrupted run
    names = output_names(path, out_dir, shape=rgb.shape[:2], geojson_gz=geojson_gz, write_parquet=write_parquet)
    names["provenance"].unlink(missing_ok=True)  # the set is incomplete until the new provenance lands
    t1 = time.perf_counter()
    writers = _Writers(names, rgb, mpp, namespace=image_stem(path), trim_above_mb=trim_above_mb)
    try:
        if mode == "ais":
            settings = _run_ais(rgb, model, predict_maps, writers, tile=tile, halo=halo, chunk=chunk,
                                batch_size=batch_size, device=device, precision=precision, mpp=mpp,
                                progress=progress, desc=Path(path).name, params=params)
        else:
            settings = _run_amg(rgb, model, writers, device=device, precision=precision, mpp=mpp, params=params)
        t2 = time.perf_counter()
        writers.finish(with_scores=mode == "ais", write_parquet=write_parquet)
    except BaseException:
        writers.abort()
        remove_empty_dirs(created)
        raise
    t3 = time.perf_counter()
    timings = {"read_s": read_s, "model_s": t1 - t0 - read_s, "segment_s": t2 - t1 - writers.measure_s,
               "measure_s": writers.measure_s, "write_s": t3 - t2, "total_s": time.perf_counter() - t0}
    _write_provenance(path, names, model, predict_maps, started, timings, writers.n, rgb.shape[:2], {
        "mode": mode, "device": device, "precision": precision, "mpp": mpp, "mpp_source": mpp_source,
        "batch_size": batch_size, "geojson_gz": geojson_gz, **settings}, key,
        {name: writers.class_counts.get(name, 0) for name in writers.class_names[1:]} if writers.class_names else None)
    return names


def run_key(path: str | os.PathLike, model: Any, predict_maps: PredictMaps | None, **parameters: Any) -> dict:
    """The run key of one image job (:mod:`histosam.io.runkey`): the model's weights hash, the input
    file's name/size/mtime, every option as given (``params`` included) and the histosam version."""
    from histosam.errors import ImageError
    from histosam.io.runkey import input_identity, make_run_key, model_identity

    if not Path(path).exists():
        raise ImageError(f"{path}: no such file")
    if Path(path).is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    try:
        ident = input_identity(path)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return make_run_key(model=model_identity(model, predict_maps), input=ident, parameters=parameters)


def existing_outputs(path: str | os.PathLike, out_dir: str | os.PathLike, key: dict, *, geojson_gz: bool = False,
                     write_parquet: bool = True) -> dict[str, Path] | None:
    """The complete output set of ``path`` in ``out_dir`` when it was made with this run ``key``; ``None`` when
    there is no complete set. Raises :class:`~histosam.io.runkey.RunMismatchError` when a complete set
    was made with another model, input, parameters or histosam version (never reused silently)."""
    import json

    from histosam.io.runkey import check_run_key

    done = read_outputs(path, out_dir, geojson_gz=geojson_gz, write_parquet=write_parquet)
    if done is None:
        return None
    try:
        old = json.loads(done["provenance"].read_text(encoding="utf-8")).get("run_key")
    except (OSError, ValueError, AttributeError):
        return None
    check_run_key(old, key, what=f"{done['provenance']}")
    return done


def _check_name_lengths(path: str | os.PathLike, names: dict[str, Path]) -> None:
    """Refuse, before anything is created, output file names longer than the file system takes (255 bytes)."""
    for p in names.values():
        if len(p.name.encode("utf-8", "surrogateescape")) > 255:
            from histosam.errors import OutputError

            raise OutputError(f"{path}: the output file name {p.name[:24]}…{p.name[-24:]} is longer than file systems "
                              f"allow (255 bytes); rename the input")


def check_params(mode: str, params: dict[str, Any]) -> None:
    """Raise a :class:`HistosamError` for an unknown ``mode`` or parameter names/values it does not take."""
    from histosam.postprocess.ais import AISParams
    from histosam.postprocess.amg import AMGParams

    if mode == "amg":
        AMGParams.from_dict(params)
        return
    if mode != "ais":
        raise HistosamError(f"mode must be 'ais' or 'amg', not {mode!r}")
    ais_keys = set(AISParams.__dataclass_fields__)
    unknown = sorted(set(params) - ais_keys - ENGINE_KEYS)
    if unknown:
        raise HistosamError(f"unknown AIS/engine parameter(s) {unknown}; valid: {sorted(ais_keys | ENGINE_KEYS)}")
    AISParams.from_dict({k: v for k, v in params.items() if k in ais_keys})


def _run_ais(rgb: np.ndarray, model, predict_maps: PredictMaps | None, writers: _Writers, *, tile, halo, chunk,
             batch_size, device, precision, mpp, progress, desc, params) -> dict[str, Any]:
    """The nuclei recipe (:mod:`histosam.tasks.nuclei`) streamed chunk by chunk into the writers."""
    from tqdm.auto import tqdm

    from histosam.tasks.nuclei import iter_nuclei_chunks, plan_nuclei, resample_rgb
    from histosam.tiling.grid import TileGrid

    job = plan_nuclei(model, rgb.shape[:2], mpp, tile=tile, halo=halo, chunk=chunk, batch_size=batch_size,
                      device=device, precision=precision, params=params, predict_maps=predict_maps)
    factor = job.factor
    work = resample_rgb(rgb, factor) if factor != 1.0 else rgb
    shape = job.work_shape
    writers.class_names = job.class_names
    writers.class_colors = class_colors(model, job.class_names)
    rows, cols = source_index(rgb.shape[0], shape[0]), source_index(rgb.shape[1], shape[1])
    bar = tqdm(iter_nuclei_chunks(job, work), total=len(TileGrid(shape, job.chunk, 0)), desc=desc, unit="chunk",
               disable=not progress, leave=False)
    for res in bar:
        if res.n == 0:
            continue
        if factor == 1.0:
            writers.add(res.labels, res.offset, res.scores, class_probs=res.class_probs)
        else:
            measured = resampled_crop(res.labels, res.offset, res.scores, work, rows, cols)
            probs = None if res.class_probs is None else res.class_probs[np.asarray(measured["keep"], int) - 1]
            writers.add(*crop_to_original(res.labels, res.offset, res.scores, rows, cols), measured=measured,
                        class_probs=probs)
    return job.settings()


#: QuPath display colours of common nucleus classes (CoNSeP's four, PanNuke's five); others get a palette colour
CLASS_COLORS = {"other": [128, 128, 128], "inflammatory": [160, 90, 160], "epithelial": [200, 0, 0],
                "spindle-shaped": [100, 200, 100], "neoplastic": [200, 0, 0], "connective": [100, 200, 100],
                "dead": [60, 60, 60]}
_PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75]]


def class_colors(model: Any, names: tuple[str, ...]) -> list[list[int]]:
    """An RGB colour per class name: the model's ``config.class_colors`` when it has them, else
    :data:`CLASS_COLORS`, else a fixed palette."""
    given = list(getattr(getattr(model, "config", None), "class_colors", None) or [])
    if len(given) == len(names):
        return [list(map(int, c)) for c in given]
    return [CLASS_COLORS.get(n, _PALETTE[i % len(_PALETTE)]) for i, n in enumerate(names)]


def _run_amg(rgb: np.ndarray, model, writers: _Writers, *, device, precision, mpp, params) -> dict[str, Any]:
    from skimage.segmentation import relabel_sequential

    from histosam.automatic import rescale_factor, segment
    from histosam.postprocess.amg import AMGParams

    amg = AMGParams.from_dict(params)  # validates the keys before the (slow) run
    labels = segment(rgb, model, mode="amg", device=device, precision=precision, mpp=mpp, **params)
    labels = relabel_sequential(labels)[0].astype(np.uint32)  # ids lost by resampling back
    writers.add(labels, (0, 0), None)
    return {"resample_factor": rescale_factor(mpp, model), "amg": amg.to_dict()}


def _write_provenance(path, names: dict[str, Path], model, predict_maps, started: str, timings: dict,
                      n: int, shape: tuple[int, int], parameters: dict, key: dict,
                      class_counts: dict[str, int] | None = None) -> None:
    if model is not None:
        from histosam.registry.loader import describe

        details = describe(model)
    else:
        details = {"name": getattr(predict_maps, "__name__", type(predict_maps).__name__), "sha256": None}
    outputs = {k: str(v) for k, v in names.items() if k != "provenance"}
    record = build_provenance(model_name=details.get("name"), model_sha256=details.get("sha256"),
                              parameters=parameters, input_path=path, started=started, outputs=outputs,
                              extra={"model_details": {**details, "weights": key["model"]["weights"]},
                                     "timings": timings, "n_objects": n, "image_shape": list(shape),
                                     "run_key": key, "class_counts": class_counts})
    write_provenance(names["provenance"], record)
