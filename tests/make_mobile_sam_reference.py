"""Writes ``tests/data/mobile_sam_reference.npz``: reference outputs of MobileSAM (``vit_t``) on the weights of
:mod:`mobile_sam_weights`, for ``test_parity_mobile_sam.py``.

MobileSAM is not on PyPI; its TinyViT encoder ships, with MobileSAM's parameter names, in ultralytics
(``ultralytics.models.sam.modules.tiny_encoder.TinyViT``, built with MobileSAM's settings), which loads the
official ``mobile_sam.pt``. MobileSAM's predictor is segment-anything's ``SamPredictor`` around that encoder, so the
reference here is ``segment_anything.modeling.Sam(TinyViT, PromptEncoder, MaskDecoder)`` + ``SamPredictor``.
Run it where ultralytics imports (it needs only its pure-Python package plus cv2/yaml/psutil/polars; e.g.
``pip install --no-deps --target LIB ultralytics torchvision opencv-python-headless polars`` then
``PYTHONPATH=LIB python tests/make_mobile_sam_reference.py``). Ultralytics (AGPL) is only executed, never copied.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mobile_sam_weights import BOX, POINT, POINTS, SEED, digest, random_state_dict, reference_image  # noqa: E402
from reference_shims import install_torchvision_shim  # noqa: E402

install_torchvision_shim()  # segment-anything's PIL resize, as in the parity tests


def reference_model():
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT

    encoder = TinyViT(img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
                      depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0,
                      drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                      local_conv_size=3, layer_lr_decay=0.8)
    sam = Sam(image_encoder=encoder,
              prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                           input_image_size=(1024, 1024), mask_in_chans=16),
              mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                       transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                     num_heads=8),
                                       transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam


def main() -> None:
    from segment_anything import SamPredictor

    sam = reference_model()
    shapes = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    state = random_state_dict(shapes)
    sam.load_state_dict(state, strict=True)
    sam.eval()  # TinyViT caches its attention-bias tables in eval(): after loading the weights
    predictor = SamPredictor(sam)
    with torch.inference_mode():
        predictor.set_image(reference_image())
        embedding = predictor.get_image_embedding()[0].numpy()
        out = {"seed": np.array(SEED), "digest": np.array(digest(state)),
               "keys": np.array(sorted(shapes)), "embedding_sub": embedding[:, ::8, ::8].copy(),
               "embedding_norm": np.array(np.linalg.norm(embedding)), "embedding_absmax": np.abs(embedding).max()}
        for name, kwargs in (("point", dict(point_coords=POINT[0], point_labels=POINT[1], multimask_output=True)),
                             ("points", dict(point_coords=POINTS[0], point_labels=POINTS[1], multimask_output=False)),
                             ("box", dict(box=BOX, multimask_output=False))):
            masks, scores, logits = predictor.predict(**kwargs)
            out[f"{name}_masks"] = np.packbits(masks, axis=-1)
            out[f"{name}_scores"] = scores
            out[f"{name}_logits"] = logits[:, ::4, ::4].copy()
    path = Path(__file__).resolve().parent / "data" / "mobile_sam_reference.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB), weights digest {out['digest']}")


if __name__ == "__main__":
    main()
