"""Train histosam-nano's nucleus-class head on CoNSeP (resumable; logs one JSON line per validation).

    python scripts/train_class_head.py --iterations 3000 --output-dir runs/classes > runs/classes.log 2>&1

Every option of :class:`histosam.train.classes.ClassTrainConfig` is a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from histosam.train.classes import ClassTrainConfig, train_class_head


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    for f in dataclasses.fields(ClassTrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "val_ids":
            p.add_argument(flag, nargs="+", default=None)
        elif f.type in ("int", "int | None"):
            p.add_argument(flag, type=int, default=None)
        elif f.type in ("float", "float | None"):
            p.add_argument(flag, type=float, default=None)
        else:
            p.add_argument(flag, default=None)
    args = {k: v for k, v in vars(p.parse_args()).items() if v is not None}
    cfg = ClassTrainConfig(**args)
    summary = train_class_head(cfg, log=lambda m: print(m, flush=True))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
