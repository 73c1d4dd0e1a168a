"""Choose the region post-processing of a region model on **training** images (never the validation split):
interior threshold × seed erosion × minimum area, by mean GlaS object F1 (object Dice breaks ties), scored at the
model's working resolution. Prints the table and the best setting as JSON (put it in config.tissue["postprocess"]
with scripts/package_tissue.py --postprocess).

    python scripts/tune_regions.py runs/tissue_A/best.pt --split runs/tissue_A/split.json --max-images 24
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np

from histosam.evaluation.glands import glas_object_metrics
from histosam.postprocess.regions import region_instances
from histosam.registry.loader import load_model
from histosam.tasks.tissue import tissue_scores
from histosam.train.tissue import load_gland_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--split", required=True, help="split.json of the training run (its 'train' list is used)")
    ap.add_argument("--data", default="../shared/data/glas/train")
    ap.add_argument("--data-mpp", type=float, default=0.62)
    ap.add_argument("--max-images", type=int, default=24)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--erosions", type=float, nargs="+", default=[0.0, 2.5, 5.0], help="µm")
    ap.add_argument("--areas", type=float, nargs="+", default=[500.0, 1500.0, 3000.0], help="µm²")
    args = ap.parse_args()
    model = load_model(args.model, device="cpu")
    train = set(json.load(open(args.split))["train"])
    images = [im for im in load_gland_images(args.data, args.data_mpp, model.config.mpp) if im.name in train]
    images = images[: args.max_images]
    scores = [tissue_scores(model, im.rgb) for im in images]
    grid = list(itertools.product(args.thresholds, args.erosions, args.areas))
    rows = []
    for t, e, a in grid:
        f1, dice = [], []
        for im, sc in zip(images, scores):
            _, inst, _ = region_instances(sc, model.config.mpp, min_area_um2=a, interior_threshold=t,
                                          seed_erosion_um=e)
            m = glas_object_metrics(im.labels, inst, hausdorff=False)
            f1.append(m.f1)
            dice.append(m.dice)
        rows.append({"interior_threshold": t, "seed_erosion_um": e, "min_area_um2": a,
                     "object_F1": float(np.mean(f1)), "object_Dice": float(np.mean(dice))})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: (round(r["object_F1"], 4), r["object_Dice"]))
    print("best:", json.dumps(best))


if __name__ == "__main__":
    main()
