"""Segment the tissue regions of one image file and write its outputs.

Outputs per input ``<stem>`` (all atomic): ``<stem>_tissue.tif`` (uint8 class map on the input grid, class index
0 = background; names in the provenance), ``<stem>_regions.geojson`` (QuPath annotations with classes, outlines
in input pixels), ``<stem>_regions.csv`` (:data:`~histosam.measure.regions.REGION_COLUMNS`) and
``<stem>_tissue_provenance.json`` (model, parameters, class names, areas per class in µm²).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["tissue_file", "tissue_outputs"]


def tissue_outputs(path: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    stem = Path(path).stem
    out = Path(out_dir)
    return {"class_map": out / f"{stem}_tissue.tif", "geojson": out / f"{stem}_regions.geojson",
            "table": out / f"{stem}_regions.csv", "provenance": out / f"{stem}_tissue_provenance.json"}


def tissue_file(path: str | os.PathLike, out_dir: str | os.PathLike, model, *, mpp: float | None = None,
                tile: int | None = None, halo: int | None = None, min_area_um2: float | None = None
                ) -> dict[str, Any]:
    """Segment one image file; returns its provenance record (see the module docstring)."""
    import tifffile

    from histosam.io.atomic import atomic_path
    from histosam.io.geojson import write_geojson
    from histosam.io.images import image_mpp, read_image
    from histosam.io.provenance import build_provenance, now_iso, write_provenance
    from histosam.io.tables import write_table
    from histosam.measure.regions import class_areas, region_features, regions_from_labels
    from histosam.registry.loader import describe
    from histosam.tasks.tissue import segment_tissue

    started = now_iso()
    t0 = time.perf_counter()
    rgb = read_image(path)
    mpp_source = "user" if mpp is not None else "none"
    if mpp is None:
        mpp = image_mpp(path)
        mpp_source = "file" if mpp is not None else "none"
    res = segment_tissue(rgb, model, mpp=mpp, tile=tile, halo=halo, min_area_um2=min_area_um2)
    colors = list((model.config.tissue or {}).get("colors") or [])
    index = {name: k for k, name in enumerate(res.class_names)}
    regions = regions_from_labels(res.instances, {i: index[c] for i, c in res.instance_classes.items()})
    feats, table = region_features(regions, res.class_names, colors, res.mpp, id_namespace=Path(path).stem)
    names = tissue_outputs(path, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(names["class_map"]) as tmp:
        tifffile.imwrite(tmp, res.class_map.astype(np.uint8), compression="zlib", photometric="minisblack",
                         resolution=(1e4 / res.mpp, 1e4 / res.mpp), resolutionunit="CENTIMETER")
    write_geojson(names["geojson"], feats)
    write_table(names["table"], table)
    info = describe(model)
    record = build_provenance(
        model_name=info.get("name"), model_sha256=info.get("sha256"),
        parameters={"mpp": res.mpp, "mpp_source": mpp_source, "working_mpp": res.working_mpp, "tile": tile,
                    "halo": halo, "min_area_um2": min_area_um2},
        input_path=path, started=started, outputs={k: str(v) for k, v in names.items() if k != "provenance"},
        extra={"task": "tissue", "class_names": res.class_names, "regions": len(regions),
               "class_areas_um2": class_areas(table, res.class_names),
               "class_pixels": {n: int((res.class_map == k).sum()) for k, n in enumerate(res.class_names)},
               "seconds": round(time.perf_counter() - t0, 2)})
    write_provenance(names["provenance"], record)
    return record
