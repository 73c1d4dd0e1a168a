"""Heads and their contracts: a model is an image encoder plus named heads (``masks``, ``instances``, and room for
``classes``, ``tissue``, ``context``, ``refine``), each a pure ``nn.Module`` that declares what it consumes and
produces. Code that runs heads (the model's ``decode_*`` methods, the batched map predictor, the tile assembler)
reads the contract instead of testing decoder names.

This module is a leaf: it imports component modules only, never the model or the builders, so every encoder file
can build its heads from here (see :mod:`histosam.models.registry`).

Adding a head (the recipe the next heads follow):
1. write the ``nn.Module`` in its own file under ``models/`` with a ``contract`` (class attribute, or a property
   when it depends on a mode, as :class:`~histosam.models.unetr.UNETRDecoder`'s BatchNorm);
2. add its builder here (``<role>_head(kind, ...)``) and its role to :data:`ROLES`;
3. give :class:`~histosam.models.sam.SegmentAnything` the slot and a ``decode_<role>`` method that feeds it the
   inputs its contract names; checkpoints store its weights under its role (see
   :mod:`histosam.registry.formats`);
4. add it to an architecture's builder and to the registry-wide tests (``tests/test_model_registry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from histosam.errors import ParameterError

__all__ = ["HeadContract", "ROLES", "INPUTS", "MASKS_CONTRACT", "sam_prompt_heads", "instance_head", "tissue_head",
           "contract_of", "context_head"]

#: head roles a model may carry (the encoder is not a head)
ROLES = ("masks", "instances", "classes", "tissue", "context", "refine")
#: what a head may consume
INPUTS = ("embedding", "skips", "frame", "prompts", "prompt_tokens", "second_input")


@dataclass(frozen=True)
class HeadContract:
    """What a head consumes and produces.

    Attributes:
        role: one of :data:`ROLES`.
        consumes: inputs in call order, from :data:`INPUTS`: ``embedding`` (``B×256×h×w`` image embedding),
            ``skips`` (the encoder's higher-resolution features, a list), ``frame`` (the preprocessed input
            ``B×3×H×W``), ``prompts`` (sparse/dense prompt embeddings), ``prompt_tokens``, ``second_input``.
        produces: names of the output channels (maps) or outputs, in order; ``len(produces)`` is the channel
            count of a map head.
        needs_padded_frame: the head's output covers the padded input frame (callers crop it).
        batch_dependent: batching tiles changes the result (BatchNorm with batch statistics, micro-sam's UNETR):
            callers then run it one tile at a time.
    """

    role: str
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    needs_padded_frame: bool = True
    batch_dependent: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown head role {self.role!r}; known: {ROLES}")
        unknown = [c for c in self.consumes if c not in INPUTS]
        if unknown:
            raise ValueError(f"unknown head inputs {unknown}; known: {INPUTS}")

    @property
    def channels(self) -> int:
        return len(self.produces)


#: AIS maps: sigmoid foreground, normalised centre distance, normalised boundary distance
AIS_CHANNELS = ("foreground", "center_distance", "boundary_distance")
#: SAM's prompt encoder + mask decoder
MASKS_CONTRACT = HeadContract("masks", ("embedding", "prompts"), ("mask_logits", "iou_predictions"),
                              needs_padded_frame=True)


def contract_of(head: nn.Module) -> HeadContract:
    """The contract a head declares (``head.contract``); a clear error for modules that declare none."""
    contract = getattr(head, "contract", None)
    if not isinstance(contract, HeadContract):
        raise TypeError(f"{type(head).__name__} declares no HeadContract (give it a 'contract' attribute)")
    return contract


def sam_prompt_heads(image_size: int, embedding_side: int, mask_decoder: str = "sam",
                     mask_decoder_options: dict | None = None) -> tuple[nn.Module, nn.Module]:
    """SAM's prompt encoder and a mask decoder for a square ``image_size`` frame and an ``embedding_side``² grid:
    ``mask_decoder`` ``"sam"`` (SAM's) or ``"refine"`` (Kim et al.'s
    :class:`~histosam.models.refine_decoder.RefineMaskDecoder`, with ``mask_decoder_options``)."""
    from histosam.models.mask_decoder import MaskDecoder
    from histosam.models.prompt_encoder import PromptEncoder
    from histosam.models.transformer import TwoWayTransformer

    prompt = PromptEncoder(256, (embedding_side, embedding_side), (image_size, image_size), 16)
    decoder = MaskDecoder(256, TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048))
    if mask_decoder != "sam" or mask_decoder_options:
        from histosam.models.refine_decoder import RefineMaskDecoder, resolve_options

        if mask_decoder != "refine":
            raise ParameterError(f"unknown mask decoder {mask_decoder!r} (use 'sam' or 'refine')")
        decoder = RefineMaskDecoder(256, TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048),
                                    **resolve_options(mask_decoder_options))
    return prompt, decoder


def instance_head(kind: str | None, *, skip_widths: tuple[int, int] | None = None) -> nn.Module | None:
    """The AIS head of kind ``kind``: ``"unetr"`` (micro-sam's released decoders, ConvTranspose),
    ``"unetr_interp"`` (torch-em >= 0.7.10, bilinear), ``"nano"`` (histosam-nano's decoder with encoder skips of
    ``skip_widths`` channels), or ``None``."""
    if kind is None:
        return None
    if kind in ("unetr", "unetr_interp"):
        from histosam.models.unetr import UNETRDecoder

        return UNETRDecoder(256, 3, conv_transpose=(kind == "unetr"))
    if kind == "nano":
        from histosam.models.nano import NanoInstanceDecoder

        if skip_widths is None:
            raise ParameterError("the nano instance head needs the encoder's skip widths")
        return NanoInstanceDecoder(256, widths=skip_widths)
    raise ParameterError(f"unknown instance head {kind!r} (use 'unetr', 'unetr_interp' or 'nano')")


#: the second encoder of histosam's own region models (SAM-Path's "pathology encoder", trained from scratch): a
#: narrow nano encoder, stride 8, 64 output channels
SECOND_ENCODER_DEFAULT = {"widths": [16, 32, 64, 96], "depths": [1, 1, 1], "out_chans": 64}


def tissue_head(spec: dict, image_size: int, embedding_side: int) -> nn.Module:
    """SAM-Path's class-prompt head (:class:`~histosam.models.class_prompts.ClassPromptHead`) from its spec
    (``ModelConfig.tissue``): ``classes`` (background first), ``tokens``, ``mlp_dim``, ``depth`` and
    ``second_encoder``: ``None`` (no branch) or the keywords of a nano encoder (``widths``, ``depths``,
    ``out_chans``; :data:`SECOND_ENCODER_DEFAULT`)."""
    from histosam.models.class_prompts import ClassPromptHead

    classes = list(spec.get("classes") or [])
    if len(classes) < 2:
        raise ParameterError("a tissue head needs at least two classes (background first)")
    second, second_dim = None, None
    branch = spec.get("second_encoder")
    if branch:
        from histosam.models.nano import NanoEncoder

        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(branch).items()}
        second = NanoEncoder(**kw)
        second_dim = int(kw.get("out_chans", 256))
    return ClassPromptHead(classes, image_size, embedding_side, tokens=int(spec.get("tokens", 4)),
                           mlp_dim=int(spec.get("mlp_dim", 512)), depth=int(spec.get("depth", 2)),
                           second_encoder=second, second_dim=second_dim)


def context_head(spec: dict) -> nn.Module:
    """WSI-SAM's multi-resolution head (:class:`~histosam.models.context_head.ContextHead`) from its spec
    (``ModelConfig.context``): ``early_channels`` (the encoder skips' widths; ``[]`` for the ViTs) and ``scale``
    (LR field / HR field)."""
    from histosam.models.context_head import ContextHead

    return ContextHead(256, tuple(spec.get("early_channels") or ()), scale=int(spec.get("scale", 4)))
