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
    args = ap.parse_args()
    model = load_model(args.checkpoint, device="cpu")
    model.config.name = "histosam-tissue"
    save_histosam(model, args.out, storage_dtype=torch.float16)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, sha256:{file_hash(args.out, 'sha256')}")


if __name__ == "__main__":
    main()
