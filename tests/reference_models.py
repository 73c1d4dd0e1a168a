"""Random reference models built with Meta's ``segment_anything`` and torch-em, saved in official formats."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from reference_shims import import_torch_em_unetr, install_torchvision_shim

install_torchvision_shim()

#: small ViT-SAM (256-px frame, 16×16 embedding) that runs in CI in a second
TINY = dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=256, window_size=4)
VIT_B = dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), img_size=1024, window_size=14)


def reference_sam(cfg: dict, seed: int = 0):
    """Meta's ``Sam`` with the given encoder config and random (non-zero) weights, eval mode."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    size = cfg["img_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg["depth"], embed_dim=cfg["embed_dim"], img_size=size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg["num_heads"], patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg["global_attn_indexes"],
            window_size=cfg["window_size"], out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(size // 16, size // 16),
                                     input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.2)  # zero-initialised in SAM; random here so that they matter
            elif name.endswith("weight") and p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    return sam.eval()


def reference_unetr(encoder, conv_transpose: bool = True, seed: int = 1, out_channels: int = 3):
    """torch-em's UNETR as micro-sam builds it (SAM encoder shared, no encoder skips), random BN statistics."""
    unetr_mod = import_torch_em_unetr()
    if unetr_mod is None:
        return None
    torch.manual_seed(seed)
    unetr = unetr_mod.UNETR(img_size=encoder.img_size, backbone="sam", encoder=encoder, out_channels=out_channels,
                            use_sam_stats=True, final_activation="Sigmoid", use_skip_connection=False,
                            resize_input=True, use_conv_transpose=conv_transpose)
    with torch.no_grad():
        for m in unetr.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.add_(torch.randn_like(m.weight) * 0.1)
                m.bias.normal_(0, 0.1)
    return unetr


def decoder_state(unetr) -> dict:
    return {k: v for k, v in unetr.state_dict().items() if not k.startswith("encoder")}


def save_sam(sam, path: Path) -> Path:
    torch.save(sam.state_dict(), path)
    return path


def save_micro_sam(sam, unetr, path: Path) -> Path:
    torch.save({"model_state": sam.state_dict(), "decoder_state": decoder_state(unetr)}, path)
    return path
