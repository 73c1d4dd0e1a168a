"""Ship a trained region model: ``best.pt`` of a tissue run → ``src/histosam/weights/histosam-tissue.pt`` (weights
stored as float16, loaded back as float32), printing its sha256 for the registry entry.

    python scripts/package_tissue.py runs/tissue_A/best.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from histosam.registry.download import file_hash
from histosam.registry.formats import save_histosam
from histosam.registry.loader import load_model

OUT = Path(__file__).resolve().parents[1] / "src" / "histosam" / "weights" / "histosam-tissue.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--postprocess", default=None,
                    help='JSON of the region post-processing to ship, e.g. {"interior_threshold": 0.5}')
    ap.add_argument("--add-roles", default=None, metavar="FILE",
                    help="a histosam file whose roles replace or join the model's (e.g. a context head and the mask "
                    "decoder it was trained with, scripts/train_context.py's context.pt)")
    ap.add_argument("--full-precision", action="store_true", help="store float32 (evaluation copies)")
    ap.add_argument("--from-state", action="store_true", help="CHECKPOINT is a training state (latest.pt)")
    args = ap.parse_args()
    if args.from_state:
        from histosam.train.tissue import model_from_state

        model = model_from_state(args.checkpoint)
    else:
        model = load_model(args.checkpoint, device="cpu")
    if args.add_roles:
        from histosam.registry import formats
        from histosam.registry.loader import apply_role

        part = formats.split_checkpoint(formats.read_checkpoint(args.add_roles), args.add_roles)
        for role, state in part.roles.items():
            if role == "context" and part.config and part.config.get("context"):
                model.config.context = part.config["context"]
            apply_role(model, role, state, args.add_roles)
            print(f"{role}: from {args.add_roles}")
    model.config.name = "histosam-tissue"
    if args.postprocess:
        import json

        keep = ("interior_threshold", "seed_erosion_um", "min_area_um2")
        chosen = {k: v for k, v in json.loads(args.postprocess).items() if k in keep}
        model.config.tissue = {**model.config.tissue, "postprocess": chosen}
    save_histosam(model, args.out, storage_dtype=None if args.full_precision else torch.float16)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, sha256:{file_hash(args.out, 'sha256')}")


if __name__ == "__main__":
    main()
