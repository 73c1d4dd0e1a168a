"""Train histosam's region model (SAM-Path class prompts + second encoder) on GlaS; resumable.

    python scripts/train_tissue.py --output runs/tissue --iterations 2000 --threads 1
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from histosam.train.tissue import TissueTrainConfig, train_tissue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TissueTrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            ap.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes"), default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" |")[0], str)
            ap.add_argument(flag, type=kind, default=f.default)
    ap.add_argument("--output", dest="output_dir")
    args = vars(ap.parse_args())
    args = {k: v for k, v in args.items() if v is not None or k in ("max_minutes", "threads")}
    summary = train_tissue(TissueTrainConfig(**args), log=lambda m: print(m, flush=True))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
