"""Streaming, resumable whole-slide segmentation (one slide or a cohort).

``segment_slide`` = tissue mask (thumbnail) -> chunk plan (only chunks touching tissue) -> chunks
computed sequentially (one process: read-ahead thread, batched ``predict_maps``, shared tile cache)
or on a Dask cluster (one task per chunk) -> each chunk's records committed to a SQLite store next to
the outputs -> final merge in chunk raster order (ids 1..N) streamed to GeoJSON.gz / Parquet / CSV /
overlay PNG + provenance JSON. Peak RAM depends on chunk, tile and batch sizes and the tile cache,
not on the slide size; a killed run resumes from the committed chunks and ends with identical outputs.

``predict_maps(tiles: uint8 B x h x w x 3) -> float32 B x 3 x h x w`` is any picklable callable
(:class:`ModelMaps` wraps a histosam model; :func:`histosam.wsi.fake.colour_threshold_maps` for tests).

Typed nuclei: a ``predict_maps`` with a non-empty ``class_names`` attribute (background first; ``ModelMaps`` of a
model with a class head) returns ``B x (3 + K) x h x w``: each nucleus gets the class of its mean probabilities
(:mod:`histosam.wsi.chunks`), the outputs carry it (:mod:`histosam.wsi.outputs`; colours from its
``class_colors`` attribute, else :func:`histosam.pipeline.image_job.class_colors`) and the provenance holds
``class_counts``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from histosam.errors import HistosamError, NoTissueWarning
from histosam.inference.runtime import release_freed_memory
from histosam.io.atomic import make_dirs, remove_empty_dirs, sweep_temp_files
from histosam.wsi.chunks import SlidePlan, make_plan, process_chunks
from histosam.wsi.outputs import SlideOutputWriter, atomic_json
from histosam.wsi.reader import open_slide
from histosam.wsi.roi import Roi
from histosam.wsi.store import ChunkStore
from histosam.wsi.tissue import detect_tissue

PredictMaps = Callable

_MODEL_CACHE: dict = {}


class ModelMaps:
    """Picklable ``predict_maps`` for a histosam model (``None`` = the default model); the model loads
    lazily, once per process (each Dask worker loads its own copy)."""

    def __init__(self, model: str | None = None, device: str | None = None, precision: str = "auto",
                 allow_pickle: bool = False, classes: bool | None = None) -> None:
        """``classes``: also predict the class head's probabilities (typed nuclei); ``None``: when the model has a
        class head; ``True`` refuses a model without one."""
        self.model, self.device, self.precision, self.allow_pickle = model, device, precision, allow_pickle
        self.classes = classes

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("classes", None)

    def _load(self):
        key = (self.model, self.device, self.precision, self.allow_pickle, self.classes)
        if key not in _MODEL_CACHE:
            from histosam.inference.maps import make_map_predictor
            from histosam.registry.loader import load_model

            model = load_model(self.model, device=self.device, require_decoder=True, allow_pickle=self.allow_pickle)
            has_head = getattr(model, "class_decoder", None) is not None
            if self.classes and not has_head:
                from histosam.errors import CheckpointError

                raise CheckpointError(f"{self.model or 'the default model'} has no class head: typed nuclei need "
                                      "a model with one")
            with_classes = has_head if self.classes is None else bool(self.classes)
            _MODEL_CACHE[key] = (model, make_map_predictor(model, device=self.device, precision=self.precision,
                                                           with_classes=with_classes), with_classes)
        return _MODEL_CACHE[key]

    def __call__(self, tiles):
        return self._load()[1](tiles)

    @property
    def loaded_model(self):
        """The model itself (loaded on first use)."""
        return self._load()[0]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class head's names, background first, when its probabilities are predicted (else empty)."""
        model, _, with_classes = self._load()
        return tuple(model.config.class_names) if with_classes else ()

    @property
    def class_colors(self) -> list[list[int]]:
        """An RGB colour per class name (the model's, else histosam's defaults)."""
        from histosam.pipeline.image_job import class_colors

        return class_colors(self._load()[0], self.class_names)

    @property
    def identity(self) -> dict:
        """``{"weights", "config"}``: content hashes of the model's weights and configuration (run keys)."""
        from histosam.io.runkey import model_identity

        return {**model_identity(self._load()[0]), "precision": self.precision}

    @property
    def postprocess(self) -> dict:
        """AIS parameters that travel with the model (``model.config.postprocess``)."""
        cfg = getattr(self._load()[0], "config", None)
        return dict(getattr(cfg, "postprocess", None) or {})


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", disable=not enabled, dynamic_ncols=True, leave=False)


def _run_sequential(plan: SlidePlan, todo: list[int], predict_maps, store: ChunkStore, bar, area_mm2,
                    cache_mb: float = 256.0) -> dict:
    stats: dict = {}
    t0 = time.perf_counter()
    chunks = process_chunks(plan, todo, predict_maps, stats=stats, cache_mb=cache_mb)
    for n, (idx, recs) in enumerate(chunks, start=1):
        store.put(idx, recs)
        release_freed_memory()  # RSS bounded by one chunk's peak (see keep_freed_memory)
        bar.update(1)
        bar.set_postfix(tiles=stats.get("tiles_predicted", 0),
                        mm2_s=f"{n * area_mm2 / max(time.perf_counter() - t0, 1e-9):.3f}")
    return stats


def _dask_task(plan: SlidePlan, idx: int, predict_maps) -> tuple[int, list[dict], int]:
    stats: dict = {}
    (i, recs), = list(process_chunks(plan, [idx], predict_maps, stats=stats, prefetch=4))
    release_freed_memory()
    return i, recs, stats.get("tiles_predicted", 0)


def _run_dask(client, plan: SlidePlan, todo: list[int], predict_maps, store: ChunkStore, bar, area_mm2) -> dict:
    from dask.distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    plan_f = client.scatter(plan, broadcast=True)
    pm_f = client.scatter(predict_maps, broadcast=True)
    pending, tiles, t0, done = iter(todo), 0, time.perf_counter(), 0
    futures = [client.submit(_dask_task, plan_f, i, pm_f, pure=False) for _, i in zip(range(2 * n_workers), pending)]
    ac = as_completed(futures)
    for fut in ac:
        idx, recs, nt = fut.result()
        store.put(idx, recs)
        done += 1
        tiles += nt
        bar.update(1)
        bar.set_postfix(tiles=tiles, mm2_s=f"{done * area_mm2 / max(time.perf_counter() - t0, 1e-9):.3f}")
        nxt = next(pending, None)
        if nxt is not None:
            ac.add(client.submit(_dask_task, plan_f, nxt, pm_f, pure=False))
    return {"tiles_predicted": tiles}


def segment_slide(
    path: str | os.PathLike,
    outdir: str | os.PathLike,
    predict_maps: PredictMaps,
    *,
    mpp: float | None = None,
    target_mpp: float = 0.25,
    roi: Roi | None = None,
    tile: int = 384,
    halo: int = 64,
    chunk: int = 2048,
    context: int = 128,
    batch_size: int = 8,
    params: dict | None = None,
    tissue_mpp: float = 8.0,
    use_tissue: bool = True,
    client=None,
    overwrite: bool = False,
    csv_table: bool = False,
    progress: bool = False,
    model_name: str = "custom",
    cache_mb: float = 256.0,
) -> dict:
    """Segment one slide into ``outdir``; returns the provenance dict (also written as JSON).

    ``client``: a ``dask.distributed.Client`` to run chunks on (``None``: in this process).
    ``cache_mb``: budget of the decoder-map tile cache shared by neighbouring chunks (sequential runs).
    """
    t_start = time.perf_counter()
    path = Path(path)
    outdir = Path(outdir)
    stem = path.name.split(".")[0] if not path.name.startswith(".") else path.name
    created = make_dirs(outdir)
    try:
        return _segment_slide(path, outdir, stem, predict_maps, mpp=mpp, target_mpp=target_mpp, roi=roi,
                              tile=tile, halo=halo, chunk=chunk, context=context, batch_size=batch_size,
                              params=params, tissue_mpp=tissue_mpp, use_tissue=use_tissue, client=client,
                              overwrite=overwrite, csv_table=csv_table, progress=progress, model_name=model_name,
                              cache_mb=cache_mb, t_start=t_start)
    except BaseException:
        remove_empty_dirs(created)  # a failed first run leaves no empty output folder
        raise


def _segment_slide(path: Path, outdir: Path, stem: str, predict_maps: PredictMaps, *, mpp, target_mpp, roi, tile,
                   halo, chunk, context, batch_size, params, tissue_mpp, use_tissue, client, overwrite, csv_table,
                   progress, model_name, cache_mb, t_start) -> dict:
    with open_slide(path, mpp=mpp) as slide:
        from histosam.limits import MAX_UPSAMPLE, LimitError

        if slide.mpp / float(target_mpp) > MAX_UPSAMPLE:
            raise LimitError(f"--target-mpp {target_mpp:g} would upsample the slide ({slide.mpp:g} µm/px at level 0) "
                             f"{slide.mpp / float(target_mpp):.0f}× (at most {MAX_UPSAMPLE:g}× is allowed)")
        names, colors = _classes_of(predict_maps)
        plan = make_plan(slide, target_mpp, roi=roi, tile=tile, halo=halo, chunk=chunk, context=context,
                         batch_size=batch_size, params=dict(params or {}), class_names=names)
        key = slide_run_key(path, predict_maps, {
            **plan.fingerprint(), "use_tissue": use_tissue, "tissue_mpp": tissue_mpp,
            "roi": None if roi is None else repr(roi)}, model_name)
        if not overwrite and is_finished(outdir, path):
            from histosam.io.runkey import check_run_key

            check_run_key(finished_key(outdir, path), key, what=str(outdir / f"{stem}.provenance.json"))
            return {**json.loads((outdir / f"{stem}.provenance.json").read_text()), "skipped": True,
                    "chunks_computed_this_run": 0, "tiles_predicted_this_run": 0}
        tissue = detect_tissue(slide, mpp=tissue_mpp) if use_tissue else None
        if tissue is not None:
            tissue.save_png(outdir / f"{stem}_tissue.png")
        plan = make_plan(slide, target_mpp, roi=roi, tissue=tissue, tile=tile, halo=halo, chunk=chunk,
                         context=context, batch_size=batch_size, params=dict(params or {}), class_names=names)
        thumb_mpp = max(slide.mpp, 2.0, max(slide.dimensions) * slide.mpp / 4096)
        thumb = slide.thumbnail(thumb_mpp)
        thumb_scale = thumb_mpp / slide.mpp
        level_dims, mpp_used, mpp_source = slide.level_dimensions, slide.mpp, slide.mpp_source
        backend = slide.backend
    todo_all = plan.todo_chunks()
    if not todo_all:
        warnings.warn(f"{path.name}: no tissue detected (thumbnail at {tissue_mpp} µm/px); nothing to "
                      f"segment. Use --no-tissue-mask to process the whole slide.", NoTissueWarning,
                      stacklevel=2)
    sweep_temp_files(outdir, stem)  # leftovers of an interrupted run (its committed chunks stay in the store)
    store = ChunkStore(outdir / f"{stem}.chunks.sqlite", key, overwrite=overwrite)
    try:
        done = store.done()
        todo = [i for i in todo_all if i not in done]
        chunk_mm2 = (plan.chunk * plan.target_mpp * 1e-3) ** 2
        bar = _progress(len(todo_all), stem, progress)
        bar.update(len(todo_all) - len(todo))
        t_compute = time.perf_counter()
        stats = {}
        if todo and client is not None:
            stats = _run_dask(client, plan, todo, predict_maps, store, bar, chunk_mm2)
        elif todo:
            stats = _run_sequential(plan, todo, predict_maps, store, bar, chunk_mm2, cache_mb=cache_mb)
        bar.close()
        compute_s = time.perf_counter() - t_compute
        writer = SlideOutputWriter(outdir, stem, thumb=thumb, thumb_scale=thumb_scale, csv_table=csv_table,
                                   class_names=names, class_colors=colors)
        try:
            for idx, recs in store.iter_chunks():
                writer.add_chunk(idx, recs)
            files = writer.close()
        except BaseException:
            writer.abort()
            raise
        n_objects = writer.n
    finally:
        store.close()
    import histosam

    prov = {
        "status": "complete",
        "histosam_version": histosam.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "slide": {"path": str(path.resolve()), "size_bytes": path.stat().st_size,
                  "levels": [list(d) for d in level_dims], "mpp": mpp_used, "mpp_source": mpp_source,
                  "backend": backend},
        "model": model_name,
        "model_weights": key["model"]["weights"],
        "plan": plan.fingerprint(),
        "run_key": key,
        "roi": None if roi is None else list(roi.bbox),
        "tissue_area_mm2": None if tissue is None else round(tissue.area_mm2, 4),
        "chunks_total": len(plan.chunk_grid()),
        "chunks_with_tissue": len(todo_all),
        "chunks_computed_this_run": len(todo),
        "tiles_predicted_this_run": stats.get("tiles_predicted", 0),
        "objects": n_objects,
        "classes": {"names": list(names), "colors": [list(c) for c in colors]} if names else None,
        "class_counts": dict(writer.class_counts) if names else None,
        "compute_seconds": round(compute_s, 3),
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "workers": None if client is None else len(client.scheduler_info().get("workers", {})),
        "outputs": {k: Path(v).name for k, v in files.items()},
    }
    if tissue is not None:
        prov["outputs"]["tissue"] = f"{stem}_tissue.png"
    atomic_json(outdir / f"{stem}.provenance.json", prov)
    return prov


SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".czi", ".dcm")


def collect_slides(inputs: list[str]) -> list[tuple[Path, float | None]]:
    """Expand inputs (slide files, folders, glob patterns, ``.csv`` lists with ``path[,mpp]``)
    into ``(path, mpp or None)``, in the given order, without duplicates."""
    import csv
    import glob

    out: dict[Path, float | None] = {}
    for item in inputs:
        p = Path(item)
        if p.suffix.lower() == ".csv" and p.is_file():
            with open(p, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if rows and rows[0] and rows[0][0].strip().lower() in ("path", "slide", "file"):
                rows = rows[1:]
            for row in rows:
                if not row or not row[0].strip():
                    continue
                sp = Path(row[0].strip())
                sp = sp if sp.is_absolute() else (p.parent / sp)
                try:
                    mpp = float(row[1]) if len(row) > 1 and row[1].strip() else None
                except ValueError as exc:
                    raise HistosamError(f"{p}: bad mpp {row[1]!r} for {row[0]!r}") from exc
                out[sp] = mpp
        elif p.is_dir():
            for f in sorted(p.iterdir()):
                if f.is_file() and f.name.lower().endswith(SLIDE_SUFFIXES):
                    out.setdefault(f, None)
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise HistosamError(f"no file matches {item!r}")
            for m in matches:
                out.setdefault(Path(m), None)
        else:
            out.setdefault(p, None)
    return list(out.items())


def _classes_of(predict_maps) -> tuple[tuple[str, ...], list[list[int]]]:
    """(class names, background first; an RGB colour each) of a predictor's class head; empty without one."""
    names = tuple(str(n) for n in (getattr(predict_maps, "class_names", None) or ()))
    if not names:
        return (), []
    if len(names) < 2:
        raise HistosamError(f"a class head needs the background and at least one nucleus class, got {list(names)}")
    colors = list(getattr(predict_maps, "class_colors", None) or [])
    if len(colors) != len(names):
        from histosam.pipeline.image_job import class_colors

        colors = class_colors(None, names)
    return names, [[int(v) for v in c] for c in colors]


def slide_run_key(path: Path, predict_maps, plan: dict, model_name: str) -> dict:
    """Run key of one slide (:mod:`histosam.io.runkey`): the model's weights hash, the slide file's
    name/size/mtime, the plan (mpp, region, tiling, post-processing) and the histosam version. It is the chunk
    store's fingerprint, so chunks of another model or slide are never mixed into a resumed run."""
    from histosam.io.runkey import input_identity, make_run_key, model_identity

    return make_run_key(model=model_identity(None, predict_maps), input=input_identity(path), parameters=plan)


def _stem(slide: str | os.PathLike) -> str:
    return Path(slide).name.split(".")[0]


def is_finished(outdir: str | os.PathLike, slide: str | os.PathLike) -> bool:
    """Whether ``outdir`` holds a complete run for ``slide`` (provenance with status complete)."""
    prov = Path(outdir) / f"{_stem(slide)}.provenance.json"
    try:
        return json.loads(prov.read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def finished_key(outdir: str | os.PathLike, slide: str | os.PathLike) -> dict | None:
    """The run key stored in a finished slide's provenance (``None``: none stored)."""
    prov = Path(outdir) / f"{_stem(slide)}.provenance.json"
    try:
        key = json.loads(prov.read_text()).get("run_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, dict) else None


def segment_cohort(inputs: list[str], outdir: str | os.PathLike, predict_maps: PredictMaps, *,
                   mpp: float | None = None, overwrite: bool = False, log=print, **kwargs) -> dict[str, str]:
    """Segment every slide of a cohort; a failing slide is reported and the others go on.

    Returns ``{slide path: "done" | "skipped" | "error: <message>"}``. Per-slide mpp from a CSV
    list wins over ``mpp``.
    """
    status: dict[str, str] = {}
    for path, slide_mpp in collect_slides(inputs):
        try:
            prov = segment_slide(path, outdir, predict_maps, mpp=slide_mpp or mpp, overwrite=overwrite,
                                 **kwargs)
            if prov.get("skipped"):
                status[str(path)] = "skipped"
                log(f"{path.name}: already finished with the same model, slide and parameters, skipped "
                    "(--overwrite recomputes)")
                continue
            status[str(path)] = "done"
            log(f"{path.name}: {prov['objects']} nuclei, {prov['chunks_with_tissue']} chunks, "
                f"{prov['total_seconds']:.1f} s")
            if prov.get("class_counts"):
                log(f"{path.name}: by class: " + ", ".join(f"{k} {v}" for k, v in prov["class_counts"].items()))
        except HistosamError as exc:
            status[str(path)] = f"error: {exc}"
            log(f"{path.name}: error: {exc}")
        except Exception as exc:  # noqa: BLE001 - one broken slide must not stop the cohort
            status[str(path)] = f"error: {type(exc).__name__}: {exc}"
            msg = " | ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
            log(f"{path.name}: unexpected error: {type(exc).__name__}: {msg} (please report it"
                + (f")\n{traceback.format_exc()}" if os.environ.get("HISTOSAM_DEBUG") else
                   "; histosam --debug slide ... shows the traceback)"))
    return status
