"""``SegmentAnything``: an image encoder plus named heads (:mod:`histosam.models.heads`): ``masks`` (SAM's prompt
encoder + mask decoder) and an optional ``instances`` head (AIS maps); each head declares a contract.

Stateless: it knows nothing of files, tiles or prompts in image coordinates. All coordinates here are in the
model's **input frame**: the image after resizing (``resize_longest_side``) or at native resolution, padded at
the bottom/right to ``image_size``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.heads import HeadContract, contract_of

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (saved with histosam checkpoints).

    Attributes:
        architecture: builder name in :mod:`histosam.models.build` (``vit_b``, ``vit_l``, ``vit_h``, ``vit_t``,
            ``nano``, ``tiny``).
        name: registry name or file stem, for provenance.
        image_size: side of the square input frame (1024 for SAM, 512 for nano).
        resize_longest_side: SAM's preprocessing (resize so the longest side equals ``image_size``); ``False``
            for models that work at a fixed native resolution and tile larger images instead.
        instance_decoder: ``None``, ``"unetr"`` (ConvTranspose, released micro-sam decoders), ``"unetr_interp"``
            (torch-em ≥ 0.7.10 bilinear variant) or ``"nano"``.
        mpp: working resolution in µm/px if the model was trained at one (nano: 0.25), else ``None``.
        prompt_window: side in input-frame pixels of the embedding window in which
            :class:`~histosam.inference.predictor.Predictor` decodes prompts for models without
            ``resize_longest_side``: the patch size the mask decoder was trained on (histosam-nano: 256 px =
            32×32 cells of its stride-8 embedding, the default, also for checkpoints saved before this field
            existed). A multiple of the embedding stride; ``None`` (or a value ≥ ``image_size``) decodes on the
            whole frame. Ignored by ``resize_longest_side`` models (SAM, micro-sam, PathoSAM), which were trained
            on the whole frame.
        tile, halo: the AIS engine's tile and halo in working pixels; ``None``: the architecture's registration
            (:func:`histosam.models.registry.architecture_tiling`; nano 1024 + 2·224, SAM-family 384 + 2·64).
        class_names: the class head's channels, background first (empty: no class head); class_colors: an RGB
            triple per class name (QuPath's display colours).
        postprocess: AIS post-processing parameters that travel with the model.
        overrides: keyword overrides passed to the builder (small test models).
        mask_decoder: ``"sam"`` (SAM's :class:`~histosam.models.mask_decoder.MaskDecoder`) or ``"refine"`` (Kim et
            al.'s :class:`~histosam.models.refine_decoder.RefineMaskDecoder`); its weights are in the ``masks``
            role either way. mask_decoder_options: the refine decoder's options (``depth``, ...).
    """

    architecture: str
    name: str = ""
    image_size: int = 1024
    resize_longest_side: bool = True
    instance_decoder: str | None = None
    mpp: float | None = None
    prompt_window: int | None = 256
    tile: int | None = None
    halo: int | None = None
    class_names: list[str] = field(default_factory=list)
    class_colors: list[list[int]] = field(default_factory=list)
    tissue: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)  #: WSI-SAM's context head spec (empty: none)
    postprocess: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    mask_decoder: str = "sam"
    mask_decoder_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class SegmentAnything(nn.Module):
    """SAM-family model. See :class:`ModelConfig` for the frame conventions."""

    checkpoint_path: str = ""  # the file it was loaded from (set by the loader)

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 instance_decoder: nn.Module | None = None, config: ModelConfig | None = None,
                 class_decoder: nn.Module | None = None, tissue_decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.class_decoder = class_decoder
        self.tissue_decoder = tissue_decoder
        self.context_decoder: nn.Module | None = None  # WSI-SAM's context head (models/context_head.py)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.instance_decoder = instance_decoder
        self.config = config or ModelConfig(architecture="custom")
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def embedding_stride(self) -> int:
        """Input-frame pixels per embedding cell (16 for the ViTs, 8 for nano)."""
        return self.image_size // self.prompt_encoder.image_embedding_size[0]

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor, pad_to: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Normalise ``B×3×h×w`` float RGB in 0–255 and zero-pad bottom/right to ``pad_to`` (a side, or
        ``(rows, cols)``; default ``image_size``); padding happens after normalisation, so padded pixels are 0
        (as SAM)."""
        x = (x - self.pixel_mean) / self.pixel_std
        rows, cols = (pad_to, pad_to) if isinstance(pad_to, int) else (pad_to or (self.image_size,) * 2)
        h, w = x.shape[-2:]
        return F.pad(x, (0, cols - w, 0, rows - h))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Preprocessed frame ``B×3×S×S`` → (embedding ``B×256×S/s×S/s``, skips for the instance decoder)."""
        return self.image_encoder.forward_features(x)

    def decode_masks(self, embedding: torch.Tensor, point_coords: torch.Tensor | None = None,
                     point_labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
                     mask_input: torch.Tensor | None = None,
                     multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompted masks.

        Args:
            embedding: ``1×256×h×w`` (shared by all prompts) or ``B×256×h×w``.
            point_coords: ``B×N×2`` float (x, y) in the input frame; point_labels: ``B×N`` (1 fg, 0 bg, −1 pad).
            boxes: ``B×4`` ``[x0, y0, x1, y1]`` in the input frame.
            mask_input: ``B×1×4h×4w`` low-resolution logits.
            multimask: three outputs instead of one.
        Returns:
            low-resolution logits ``B×M×4h×4w`` and predicted IoU ``B×M`` (M = 3 or 1).
        """
        points = (point_coords, point_labels) if point_coords is not None else None
        size = tuple(embedding.shape[-2:])
        sparse, dense = self.prompt_encoder(points, boxes, mask_input, embedding_size=size)
        if sparse.shape[0] != dense.shape[0]:
            dense = dense.expand(sparse.shape[0], -1, -1, -1)
        return self.mask_decoder(embedding, self.prompt_encoder.get_dense_pe(size).to(embedding.dtype),
                                 sparse.to(embedding.dtype), dense.to(embedding.dtype), multimask)

    def decode_instances(self, embedding: torch.Tensor, skips: list[torch.Tensor],
                         frame: torch.Tensor | None = None) -> torch.Tensor:
        """AIS maps ``B×3×S×S`` (sigmoid; fg, centre distance, boundary distance) in the padded input frame.

        ``frame`` is the preprocessed input (used by decoders with a full-resolution image skip)."""
        if self.instance_decoder is None:
            from histosam.errors import CheckpointError

            raise CheckpointError(
                f"model {self.config.name or self.config.architecture!r} has no instance decoder: automatic "
                "instance segmentation (AIS) needs a checkpoint with a decoder (e.g. a PathoSAM/micro-sam file "
                "with 'decoder_state'); use mode='amg' instead"
            )
        inputs = {"embedding": embedding, "skips": skips, "frame": frame}
        return self.instance_decoder(*(inputs[name] for name in contract_of(self.instance_decoder).consumes))

    @property
    def heads(self) -> dict[str, nn.Module]:
        """The heads this model carries, by role (:data:`histosam.models.heads.ROLES`): ``masks`` (SAM's mask
        decoder, fed by the prompt encoder) and ``instances`` when present."""
        out: dict[str, nn.Module] = {"masks": self.mask_decoder}
        if self.instance_decoder is not None:
            out["instances"] = self.instance_decoder
        if self.class_decoder is not None:
            out["classes"] = self.class_decoder
        if self.tissue_decoder is not None:
            out["tissue"] = self.tissue_decoder
        if self.context_decoder is not None:
            out["context"] = self.context_decoder
        return out

    def decode_classes(self, embedding: torch.Tensor, skips: list[torch.Tensor],
                       frame: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``B×K×S×S`` in the padded input frame (K = ``len(config.class_names)``, background first;
        softmax over K gives probabilities)."""
        if self.class_decoder is None:
            from histosam.errors import CheckpointError

            raise CheckpointError(f"model {self.config.name or self.config.architecture!r} has no class head")
        inputs = {"embedding": embedding, "skips": skips, "frame": frame}
        return self.class_decoder(*(inputs[name] for name in contract_of(self.class_decoder).consumes))

    def decode_tissue(self, embedding: torch.Tensor, frame: torch.Tensor | None = None) -> torch.Tensor:
        """Tissue logits ``B×(K+1)×4h×4w`` in the padded input frame (K = ``len(config.tissue["classes"])``,
        background first, softmax over them; the last channel is the region interior, sigmoid): see
        :class:`~histosam.models.class_prompts.ClassPromptHead`."""
        if self.tissue_decoder is None:
            from histosam.errors import CheckpointError

            raise CheckpointError(f"model {self.config.name or self.config.architecture!r} has no tissue head (use a "
                                  "region model such as histosam-tissue)")
        inputs = {"embedding": embedding, "frame": frame}
        return self.tissue_decoder(*(inputs[name] for name in contract_of(self.tissue_decoder).consumes))

    def decode_context(self, hr_embedding: torch.Tensor, hr_skips: list[torch.Tensor], lr_embedding: torch.Tensor,
                       lr_skips: list[torch.Tensor], point_coords: torch.Tensor | None = None,
                       point_labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
                       lr_point_coords: torch.Tensor | None = None, lr_boxes: torch.Tensor | None = None,
                       mask_input: torch.Tensor | None = None,
                       features: tuple[torch.Tensor, torch.Tensor] | None = None, lr_mask: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """WSI-SAM's dual decoding (:class:`~histosam.models.context_head.ContextHead`): prompts in the HR frame
        (``point_coords``, ``boxes``, ``mask_input`` as :meth:`decode_masks`) and the same prompts mapped into the
        concentric LR frame (``lr_point_coords``, ``lr_boxes``; labels shared); ``features``: the head's
        ``frame_features`` of (HR, LR) when cached. Returns HR logits ``B×1×4h×4w``, LR logits (LR frame; ``None``
        with ``lr_mask=False``, which skips the LR frame's upscaling) and the IoU prediction ``B×1``."""
        if self.context_decoder is None:
            from histosam.errors import CheckpointError

            raise CheckpointError(f"model {self.config.name or self.config.architecture!r} has no context head")
        size = tuple(hr_embedding.shape[-2:])
        hr_pts = (point_coords, point_labels) if point_coords is not None else None
        lr_pts = (lr_point_coords, point_labels) if lr_point_coords is not None else None
        hr_sparse, hr_dense = self.prompt_encoder(hr_pts, boxes, mask_input, embedding_size=size)
        lr_sparse, lr_dense = self.prompt_encoder(lr_pts, lr_boxes, None, embedding_size=size)
        head = self.context_decoder
        if features is None:
            features = (head.frame_features(hr_embedding, hr_skips), head.frame_features(lr_embedding, lr_skips))
        dt = hr_embedding.dtype
        return head(self.mask_decoder, self.prompt_encoder.get_dense_pe(size).to(dt), hr_embedding,
                    hr_sparse.to(dt), hr_dense.to(dt), lr_embedding, lr_sparse.to(dt), lr_dense.to(dt), *features,
                    lr_mask=lr_mask)

    def contracts(self) -> dict[str, HeadContract]:
        """Each head's :class:`~histosam.models.heads.HeadContract`, by role."""
        return {role: contract_of(head) for role, head in self.heads.items()}
