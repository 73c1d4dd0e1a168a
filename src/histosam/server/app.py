"""FastAPI app speaking samapi's protocol (QuPath SAM extension), backed by a :class:`ModelBackend`.

Endpoints (paths and trailing slashes as the client builds them):
``GET /sam/version/`` (text), ``GET /sam/weights/[?type=]`` (JSON array of ``{type,name,url}``),
``POST /sam/weights/`` (text), ``GET /sam/weights/cancel/`` (text), ``GET /sam/progress/``
(``{"message","percent"}``), ``POST /sam/`` and ``POST /sam/automask/`` (JSON array of GeoJSON
Features; a model with a class head types the automask nuclei: :func:`_typed_properties`),
``GET /sam/health/`` (JSON, histosam addition). Video, SAM3 and upload endpoints answer
501. Every error is a JSON object ``{"detail": "<message>"}`` with a 4xx status (5xx only for bugs,
without a traceback).

Handlers are plain ``def`` functions, so FastAPI runs them in its thread pool: base64/PNG decoding,
hashing and polygon tracing of concurrent requests overlap, while the backend serialises model work.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from histosam.errors import CheckpointError, HistosamError, ImageError, ModelNotAvailableError
from histosam.server.backend import ModelBackend, WorkLimits, automask_area_message
from histosam.server.geometry import feature, labels_to_geometries, mask_to_geometry
from histosam.server.imaging import DecodedImage, ImageTooLargeError, decode_image
from histosam.server.middleware import GuardMiddleware
from histosam.server.protocol import SAM_TYPES, SAMAutoMaskBody, SAMBody, SAMWeightsBody
from histosam.server.weights import RequestError, WeightsTable

log = logging.getLogger("histosam.server")


@dataclass
class ServerConfig:
    """Limits and access control. ``token``: when set, every request must carry it. ``limits``: work per
    request (prompt points, automask area; the backend applies its AMG limits)."""

    max_body_bytes: int = 64 * 2**20
    max_pixels: int = 4096 * 4096
    token: str | None = None
    limits: WorkLimits = field(default_factory=WorkLimits)


def _status_for(exc: HistosamError) -> int:
    if isinstance(exc, RequestError):
        return exc.status_code
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, ModelNotAvailableError):
        return 503
    if isinstance(exc, (ImageError, CheckpointError)):
        return 422
    return 422


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) if loc else "body"
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            where, msg = "body", "request body is not valid JSON"
        elif err.get("type") == "enum" and loc and loc[-1] == "type":
            msg = f"unknown model type {err.get('input')!r}; expected one of {list(SAM_TYPES)}"
        parts.append(f"{where}: {msg}")
    return "invalid request: " + "; ".join(parts)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(content=json.dumps(obj), media_type="application/json", status_code=status)


def _check_prompt_size(body: SAMBody, limits: WorkLimits) -> None:
    """Refuse too many points before the image is decoded (the cheap check first)."""
    n = len(body.point_coords or ())
    if n > limits.max_points:
        raise RequestError(
            f"{n} prompt points; this server allows at most {limits.max_points} per request "
            "(histosam serve --max-points)"
        )


def _prompt_arrays(body: SAMBody, shape: tuple[int, int]) -> tuple[Any, Any, Any]:
    """``(points (N,2) float32 | None, labels (N,) int32 | None, box (4,) float32 | None)``, checked against
    the image ``shape`` ``(H, W)``: coordinates must be finite; points must lie in the image
    (``0 <= x <= W``, ``0 <= y <= H``); a box must overlap the image and is clipped to it (the client sends
    a rectangle drawn across the slide's edge as it is)."""
    h, w = shape
    points = labels = box = None
    if body.point_coords:
        if body.point_labels is None or len(body.point_labels) != len(body.point_coords):
            n_lab = None if body.point_labels is None else len(body.point_labels)
            raise RequestError(
                f"point_labels must give one label per point: {len(body.point_coords)} point_coords, "
                f"{n_lab} point_labels"
            )
        for i, (x, y) in enumerate(body.point_coords):
            if not (math.isfinite(x) and math.isfinite(y)):
                raise RequestError(f"point_coords[{i}] = [{x}, {y}] is not a pair of finite numbers")
            if not (0 <= x <= w and 0 <= y <= h):
                raise RequestError(
                    f"point_coords[{i}] = [{x:g}, {y:g}] lies outside the {w}×{h} image "
                    f"(0 <= x <= {w}, 0 <= y <= {h})"
                )
        points = np.asarray(body.point_coords, dtype=np.float32).reshape(-1, 2)
        labels = np.asarray(body.point_labels, dtype=np.int32)
    if body.bbox is not None:
        x1, y1, x2, y2 = body.bbox
        if not all(math.isfinite(v) for v in body.bbox):
            raise RequestError(f"bbox = {list(body.bbox)} is not four finite numbers")
        if x2 < x1 or y2 < y1:
            raise RequestError(f"bbox must be [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, got {body.bbox}")
        if x2 < 0 or y2 < 0 or x1 > w or y1 > h:
            raise RequestError(f"bbox = [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {w}×{h} image")
        box = np.asarray([min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)],
                         dtype=np.float32)
    if points is None and box is None:
        raise RequestError("the request has no prompt: give bbox and/or point_coords with point_labels")
    if labels is not None and box is None and not (labels == 1).any():
        raise RequestError("point prompts need at least one foreground point (label 1)")
    return points, labels, box


def _prompt_mask(body: SAMBody, shape: tuple[int, int]) -> Any:
    """``b64mask``: an earlier mask of the object as a base64 image (PNG, ...) of the viewport image's size,
    non-zero = object (fed back as SAM's mask prompt, for iterative correction); ``None`` when absent."""
    if not body.b64mask:
        return None
    import io

    from PIL import Image

    from histosam.server.imaging import _b64_to_bytes

    try:
        with Image.open(io.BytesIO(_b64_to_bytes(body.b64mask))) as im:
            arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 -- any undecodable mask is one 4xx message
        raise RequestError(f"b64mask is not a base64 image ({type(exc).__name__})") from None
    if arr.ndim == 3:
        arr = arr.any(axis=-1)
    if arr.shape != tuple(shape):
        raise RequestError(f"b64mask is {arr.shape[1]}×{arr.shape[0]} px; it must have the image's size "
                           f"{shape[1]}×{shape[0]}")
    return arr != 0


def _typed_properties(idx: int, result: Any) -> dict[str, Any]:
    """Properties of a typed nucleus: QuPath's ``classification`` ``{"name", "color": [r, g, b]}`` and the class
    probabilities as ``measurements``. The extension sets an object's class from ``object_idx`` when there is one
    (``Utils.parsePathObject``), after reading ``classification``; so ``object_idx`` is the class name here (QuPath
    then keeps the class, and its colour when the class is new to it) and the nucleus' id is ``nucleus_id``."""
    name, color = result.classes[idx]
    props: dict[str, Any] = {"object_idx": str(name), "nucleus_id": int(idx),
                             "classification": {"name": str(name), "color": [int(c) for c in color]}}
    probs = (getattr(result, "class_probabilities", None) or {}).get(idx)
    if probs:
        props["measurements"] = {f"class probability {n}": float(v) for n, v in probs.items()}
    return props


def create_app(backend: ModelBackend, weights: WeightsTable, config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app. ``weights`` is the table offered to clients; ``backend`` does the model work."""
    from histosam import __version__

    config = config or ServerConfig()
    app = FastAPI(title="histosam serve", version=__version__, docs_url=None, redoc_url=None)
    app.add_middleware(GuardMiddleware, max_body_bytes=config.max_body_bytes, token=config.token)
    app.state.backend, app.state.weights, app.state.config = backend, weights, config

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(HistosamError)
    async def _on_histosam(request: Request, exc: HistosamError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_status_for(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal server error ({type(exc).__name__}); see the server log"}, status_code=500
        )

    @app.get("/sam/version/", response_class=PlainTextResponse)
    def version() -> str:
        return __version__

    @app.get("/sam/weights/")
    def list_weights(type: str | None = None) -> Response:
        if type is not None and type not in SAM_TYPES:
            raise RequestError(f"unknown model type {type!r}; expected one of {list(SAM_TYPES)}")
        return _json([e.public() for e in weights.list(type)])

    @app.post("/sam/weights/", response_class=PlainTextResponse)
    def register_weights(body: SAMWeightsBody) -> str:
        return weights.register(body.type, body.name, body.url)

    @app.get("/sam/weights/cancel/", response_class=PlainTextResponse)
    def cancel_download() -> str:
        weights.progress.cancel.set()
        return "Cancel signal sent"

    @app.get("/sam/progress/")
    def progress() -> Response:
        return _json(weights.progress.as_json())

    @app.get("/sam/health/")
    def health() -> Response:
        return _json({"status": "ok", "version": __version__, **backend.stats()})

    @app.post("/sam/")
    def predict(body: SAMBody) -> Response:
        _check_prompt_size(body, config.limits)
        entry = weights.resolve(body.type, body.checkpoint_url)
        image: DecodedImage = decode_image(body.b64img, config.max_pixels)
        points, labels, box = _prompt_arrays(body, image.shape)
        mask = _prompt_mask(body, image.shape)
        extra = {"mask": mask} if mask is not None else {}  # backends without mask prompts still answer the rest
        result = backend.predict(entry, image, points, labels, box, body.multimask_output, **extra)
        features = []
        for i, (mask, score) in enumerate(zip(result.masks, result.scores)):
            geom = mask_to_geometry(mask)
            if geom is None:
                continue  # an empty mask has no geometry; the client would choke on it
            props = {"object_idx": i, "label": "object", "quality": float(score), "sam_model": body.type}
            features.append(feature(geom, props))
        return _json(features)

    @app.post("/sam/automask/")
    def automask(body: SAMAutoMaskBody) -> Response:
        entry = weights.resolve(body.type, body.checkpoint_url)
        image = decode_image(body.b64img, config.max_pixels)
        h, w = image.shape
        if h * w > config.limits.max_automask_pixels:
            raise RequestError(automask_area_message(h, w, config.limits.max_automask_pixels))
        result = backend.automask(entry, image, body.amg_params())
        features = []
        for idx, geom in labels_to_geometries(result.labels).items():
            props: dict[str, Any] = {"object_idx": idx, "label": "object", "sam_model": body.type}
            if idx in result.scores:
                props["quality"] = float(result.scores[idx])
            if idx in (getattr(result, "classes", None) or {}):  # typed nuclei (a class head)
                props.update(_typed_properties(idx, result))
            features.append(feature(geom, props))
        return _json(features)

    def _unsupported(what: str) -> Any:
        def handler() -> JSONResponse:
            return JSONResponse({"detail": f"{what} is not supported by histosam serve"}, status_code=501)

        return handler

    app.post("/sam/sam3/")(_unsupported("SAM3 text prompting"))
    app.post("/sam/upload/")(_unsupported("video frame upload"))
    app.post("/sam/video/")(_unsupported("video tracking"))
    app.post("/sam/sam3video/")(_unsupported("SAM3 video tracking"))
    return app
