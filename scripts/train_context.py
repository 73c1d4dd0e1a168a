"""Train WSI-SAM's context head on GlaS glands, or the same-budget baseline without context; resumable
(``latest.pt`` in the output folder).

    python scripts/train_context.py --output runs/context --iterations 2000 --threads 2
    python scripts/train_context.py --no-context --output runs/context_baseline --iterations 2000 --threads 2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from histosam.train.context import ContextTrainConfig, train_context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(ContextTrainConfig):
        if f.name == "context":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" |")[0], str)
        ap.add_argument(flag, type=kind, default=None)
    ap.add_argument("--output", dest="output_dir")
    ap.add_argument("--context", dest="context", action="store_true", default=True,
                    help="train the context head (default)")
    ap.add_argument("--no-context", dest="context", action="store_false",
                    help="the baseline: finetune the mask decoder on the HR frame alone, same budget")
    args = {k: v for k, v in vars(ap.parse_args()).items() if v is not None}
    summary = train_context(ContextTrainConfig(**args), log=lambda m: print(m, flush=True))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
