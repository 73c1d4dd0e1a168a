"""Package a trained histosam-nano run as the embedded default model.

    python scripts/finalize_nano.py runs/histosam-nano/best.pt --config configs/histosam-nano.yaml

1. loads the checkpoint, 2. predicts the stitched decoder maps of the validation images and grid-searches the
AIS post-processing parameters on them (mean per-image mSA, PathoSAM's selection rule), 3. writes
``src/histosam/weights/histosam-nano.pt`` (histosam format, fp32, parameters in ``config.postprocess``) and
``src/histosam/weights/histosam-nano.json`` (validation ids, grid, per-image scores), atomically.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from histosam.evaluation.gridsearch import grid_search, stitched_maps
from histosam.evaluation.metrics import mean_segmentation_accuracy
from histosam.io.atomic import atomic_write
from histosam.postprocess.ais import watershed_from_maps
from histosam.registry.formats import save_histosam
from histosam.registry.loader import load_model
from histosam.train.data import list_samples, read_sample

OUT = Path(__file__).resolve().parents[1] / "src" / "histosam" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--config", default="configs/histosam-nano.yaml")
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()
    cfg = yaml.safe_load(open(args.config))
    model = load_model(args.checkpoint, device="cpu")
    samples = {s.id: s for s in list_samples(cfg["data_dirs"])}
    val = [samples[i] for i in cfg["val_ids"]]
    t0 = time.time()
    maps, labels = [], []
    for s in val:
        img, lab = read_sample(s)
        maps.append(stitched_maps(model, img, precision=args.precision))
        labels.append(lab)
    best, rows = grid_search(maps, labels)
    per_image = {s.id: mean_segmentation_accuracy(lab.astype(np.uint32), watershed_from_maps(m, params=best))
                 for s, m, lab in zip(val, maps, labels)}
    model.config.postprocess = best.to_dict()
    model.config.name = "histosam-nano"
    OUT.mkdir(parents=True, exist_ok=True)
    save_histosam(model, OUT / "histosam-nano.pt", extra={"trained_from": str(args.checkpoint)})
    record = {"model": "histosam-nano", "checkpoint": str(args.checkpoint), "val_ids": cfg["val_ids"],
              "postprocess": best.to_dict(), "val_msa_untiled_postprocessing": per_image,
              "val_msa_mean": float(np.mean(list(per_image.values()))), "grid": rows,
              "seconds": round(time.time() - t0, 1)}
    # regression reference: the public inference path (tiled engine, fp32) on the first two validation images
    from histosam.automatic import segment

    shipped = load_model(OUT / "histosam-nano.pt", device="cpu")
    record["regression"] = {}
    for s in val[:2]:
        img, lab = read_sample(s)
        seg = segment(img, model=shipped, precision="fp32")
        record["regression"][s.id] = {
            "image": "/".join(Path(s.image).parts[-3:]), "msa": mean_segmentation_accuracy(lab.astype(np.uint32), seg),
            "n_objects": int(seg.max())}
    with atomic_write(OUT / "histosam-nano.json", "w") as fh:
        json.dump(record, fh, indent=1)
    print(json.dumps({k: v for k, v in record.items() if k != "grid"}, indent=1))


if __name__ == "__main__":
    main()
