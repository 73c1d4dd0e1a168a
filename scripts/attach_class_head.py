"""Attach a trained class head (``best_head.pt`` of scripts/train_class_head.py) to a model and save it in
histosam's format (the class names and QuPath colours travel in its config).

    python scripts/attach_class_head.py runs/classes/best_head.pt -o /tmp/nano-typed.pt [--model histosam-nano]
"""

from __future__ import annotations

import argparse
import sys

import torch


def main() -> int:
    from histosam.models.nano import NanoClassDecoder
    from histosam.pipeline.image_job import class_colors
    from histosam.registry.formats import read_checkpoint, save_histosam
    from histosam.registry.loader import load_model

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("head")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--model", default="histosam-nano")
    args = p.parse_args()
    head = read_checkpoint(args.head)
    names = list(head["class_names"])
    model = load_model(args.model, device="cpu")
    decoder = NanoClassDecoder(names, widths=tuple(model.image_encoder.widths[:2]))
    decoder.load_state_dict(head["state_dict"])
    model.class_decoder = decoder.eval()
    model.config.class_names = names
    model.config.class_colors = class_colors(None, tuple(names))
    extra = {k: v for k, v in read_checkpoint(model.checkpoint_path).items()
             if k not in ("format", "version", "config", "roles", "state_dict", "weights_sha256")}
    extra["class_head"] = {"step": int(head.get("step", 0)), "val_loss": float(head.get("val_loss", float("nan"))),
                           "recipe": dict(head.get("config", {}))}
    save_histosam(model, args.output, extra=extra)
    print(f"wrote {args.output}: classes {names}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
