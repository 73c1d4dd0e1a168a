"""Request bodies of the samapi protocol spoken by QuPath's SAM extension (qupath-extension-sam).

Field names, types and defaults follow samapi's Pydantic models so that the unmodified Java client
works: the client serialises with Gson, which *omits* null fields, so every optional field here has
a default and absent keys are the normal case. Unknown extra keys are ignored (newer clients add
fields). Coordinates are pixels of the image sent in ``b64img`` (the rendered QuPath viewport),
``(x, y)`` with the origin at the top-left.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SAMType(StrEnum):
    """Model families the client knows (``entities/SAMType.java``); weights come from ``checkpoint_url``."""

    vit_h = "vit_h"
    vit_l = "vit_l"
    vit_b = "vit_b"
    vit_t = "vit_t"
    sam2_l = "sam2_l"
    sam2_bp = "sam2_bp"
    sam2_s = "sam2_s"
    sam2_t = "sam2_t"
    sam3 = "sam3"


SAM_TYPES: tuple[str, ...] = tuple(t.value for t in SAMType)

#: samapi's default for ``type`` when a body leaves it out.
DEFAULT_TYPE = SAMType.vit_h


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", use_enum_values=True)


class SAMBody(_Body):
    """``POST /sam/``: one prompt object on one viewport image.

    ``bbox`` is ``[x1, y1, x2, y2]``; ``point_coords`` is ``[[x, y], ...]`` with ``point_labels``
    (1 foreground, 0 background; the client puts background points first). At least one of
    ``bbox`` and ``point_coords`` must be present. Coordinates are checked against the decoded image
    (finite, inside it) and the number of points against the server's limit, in ``app``.
    """

    type: SAMType = DEFAULT_TYPE
    b64img: str
    bbox: tuple[float, float, float, float] | None = None
    point_coords: list[tuple[float, float]] | None = None
    point_labels: list[int] | None = None
    b64mask: str | None = None
    multimask_output: bool = False
    checkpoint_url: str | None = None

    @field_validator("point_labels")
    @classmethod
    def _labels_binary(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(lab not in (0, 1) for lab in v):
            raise ValueError("point_labels must be 0 (background) or 1 (foreground)")
        return v


class SAMAutoMaskBody(_Body):
    """``POST /sam/automask/``: automatic segmentation of the whole viewport image.

    The automatic-mask-generation (AMG) parameters carry SAM's names and samapi's defaults; they are
    used when the model has no instance decoder. Decoder-based AIS ignores them. Floats must be finite;
    the server bounds the work they ask for (:class:`histosam.server.backend.WorkLimits`).
    """

    type: SAMType = DEFAULT_TYPE
    b64img: str
    points_per_side: int | None = Field(default=32, ge=1, le=256)
    points_per_batch: int = Field(default=64, ge=1, le=4096)
    pred_iou_thresh: float = Field(default=0.88, allow_inf_nan=False)
    stability_score_thresh: float = Field(default=0.95, allow_inf_nan=False)
    stability_score_offset: float = Field(default=1.0, allow_inf_nan=False)
    box_nms_thresh: float = Field(default=0.7, allow_inf_nan=False)
    crop_n_layers: int = Field(default=0, ge=0, le=4)
    crop_nms_thresh: float = Field(default=0.7, allow_inf_nan=False)
    crop_overlap_ratio: float = Field(default=512 / 1500, ge=0.0, lt=1.0, allow_inf_nan=False)
    crop_n_points_downscale_factor: int = Field(default=1, ge=1, le=64)
    min_mask_region_area: int = Field(default=0, ge=0, le=2**31)
    output_type: str = "Single Mask"
    include_image_edge: bool = False
    checkpoint_url: str | None = None

    def amg_params(self) -> dict[str, float | int]:
        """The AMG parameters, SAM-named, for ``histosam.segment(..., mode="amg", **params)``."""
        names = (
            "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
            "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
            "crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area",
        )
        out = {n: getattr(self, n) for n in names}
        if out["points_per_side"] is None:
            out.pop("points_per_side")
        return out


class SAMWeightsBody(_Body):
    """``POST /sam/weights/``: register ``url`` (http(s) URL or local path) as ``type``/``name``."""

    type: SAMType
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=4096)
