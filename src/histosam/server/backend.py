"""Model side of the server: which model, which cached image embedding, one inference at a time.

:class:`ModelBackend` is the small interface the HTTP layer needs; :class:`HistosamBackend`
implements it with :func:`histosam.load_model`, :class:`histosam.Predictor` and
:func:`histosam.segment`. One process serves every client:

- models are loaded on first use (nothing at start-up) and kept in an LRU of ``max_models``;
- one :class:`histosam.Predictor` per model, whose LRU of ``cache_size`` image embeddings is keyed
  by a hash of the decoded pixels and shared by all requests and clients, so a second prompt on
  the same viewport (any PNG encoding of it) skips the encoder;
- all model work runs under one lock, granted in arrival order (:class:`FairLock`); decoding, hashing,
  polygon tracing and the first-use download of registry weights run outside it;
- the work one request may do under the lock is bounded (:class:`WorkLimits`: prompt points, automask
  area, AMG point prompts and crops), so no request holds the lock for long.

A model with a class head (e.g. ``histosam-nano-classes``) types the nuclei of an automask request
(:func:`histosam.tasks.nuclei.segment_typed_nuclei`: the same labels as ``histosam.segment``, each nucleus with
the class of its mean class probabilities, background class excluded): :class:`AutoResult` then carries each
nucleus' class name, colour and probabilities.
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from histosam.server.imaging import DecodedImage
from histosam.server.weights import RequestError, WeightEntry


@dataclass(frozen=True)
class WorkLimits:
    """Bounds on the model work of one request (each answered 422 with the limit when exceeded).

    ``max_points``: points of one prompt request. ``max_automask_pixels``: image area of an automask
    request (AIS and AMG time grow with it). ``max_amg_points``: AMG point prompts over all crops
    (``points_per_side²`` per crop of layer 0, ``(points_per_side / downscale**i)²`` per crop of layer i).
    ``max_amg_crops``: AMG crops (1 + 4 + 16 + … for ``crop_n_layers`` 0, 1, 2…; each crop is encoded).
    ``max_points_per_batch``: AMG's ``points_per_batch`` is lowered to this (same masks, bounded memory).
    """

    max_points: int = 512
    max_automask_pixels: int = 4096 * 2048
    max_amg_points: int = 4096
    max_amg_crops: int = 21
    max_points_per_batch: int = 256


def amg_work(params: dict[str, Any]) -> tuple[int, int]:
    """``(point prompts, crops)`` AMG runs for ``params`` (SAM's crop layers and point grids)."""
    from histosam.postprocess.amg import AMGParams

    p = AMGParams.from_dict(params)
    points = crops = 0
    for layer in range(p.crop_n_layers + 1):
        n_crops = 4**layer
        side = int(p.points_per_side / (p.crop_n_points_downscale_factor**layer))
        if side < 1:
            raise RequestError(
                f"AMG parameters give crop layer {layer} no points: points_per_side ({p.points_per_side}) / "
                f"crop_n_points_downscale_factor ({p.crop_n_points_downscale_factor})^{layer} < 1"
            )
        crops += n_crops
        points += n_crops * side * side
    return points, crops


def check_amg_work(params: dict[str, Any], limits: WorkLimits) -> dict[str, Any]:
    """``params`` with ``points_per_batch`` capped; :class:`RequestError` (422) when the run is too large."""
    points, crops = amg_work(params)
    if crops > limits.max_amg_crops:
        raise RequestError(
            f"automatic mask generation with crop_n_layers={params.get('crop_n_layers')} encodes {crops} crops; "
            f"this server allows at most {limits.max_amg_crops} per request (histosam serve --max-amg-crops)"
        )
    if points > limits.max_amg_points:
        raise RequestError(
            f"automatic mask generation with these parameters runs {points} point prompts "
            f"(points_per_side={params.get('points_per_side', 32)}, crop_n_layers={params.get('crop_n_layers', 0)}, "
            f"crop_n_points_downscale_factor={params.get('crop_n_points_downscale_factor', 1)}); this server "
            f"allows at most {limits.max_amg_points} per request (histosam serve --max-amg-points)"
        )
    out = dict(params)
    if "points_per_batch" in out:
        out["points_per_batch"] = max(1, min(int(out["points_per_batch"]), limits.max_points_per_batch))
    return out


class FairLock:
    """A lock granted in arrival order (first come, first served).

    ``threading.Lock`` wakes an arbitrary waiter, so a client sending requests back to back can keep
    others waiting; here each acquirer takes a ticket and waits for its turn. ``waiting`` counts the
    threads queued behind the holder.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0  # next ticket to hand out
        self._serving = 0  # ticket whose turn it is
        self._abandoned: set[int] = set()

    def acquire(self) -> bool:
        with self._cond:
            ticket = self._next
            self._next += 1
            try:
                while ticket != self._serving:
                    self._cond.wait()
            except BaseException:  # interrupted while queued: give the turn up
                if ticket == self._serving:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
                raise
            return True

    def release(self) -> None:
        with self._cond:
            self._advance()

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @property
    def waiting(self) -> int:
        with self._cond:
            return max(0, self._next - self._serving - 1 - len(self._abandoned))

    def locked(self) -> bool:
        with self._cond:
            return self._next > self._serving

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@dataclass
class PromptResult:
    """``masks``: bool ``C×H×W`` (C = 3 with multimask, else 1); ``scores``: float32 ``(C,)``, paired."""

    masks: np.ndarray
    scores: np.ndarray


@dataclass
class AutoResult:
    """``labels``: uint32 ``H×W`` (0 background); ``scores``: id → quality, when the mode has one.

    Typed nuclei (a model with a class head): ``classes``: id → ``(class name, [r, g, b])``;
    ``class_probabilities``: id → ``{class name: mean probability}`` (every class, background included)."""

    labels: np.ndarray
    mode: str
    scores: dict[int, float] = field(default_factory=dict)
    classes: dict[int, tuple[str, list[int]]] = field(default_factory=dict)
    class_probabilities: dict[int, dict[str, float]] = field(default_factory=dict)


class ModelBackend(Protocol):
    """What the HTTP layer calls. Implementations must be thread-safe."""

    def predict(
        self,
        entry: WeightEntry,
        image: DecodedImage,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        multimask: bool,
        mask: np.ndarray | None = None,
    ) -> PromptResult:
        """Prompted masks for one object; ``points`` ``(N,2)`` float (x, y), ``labels`` ``(N,)``,
        ``box`` ``(4,)`` ``[x0, y0, x1, y1]``, all in pixels of ``image``; ``mask``: an earlier mask of the object
        (bool, ``image``'s size; the app passes it only when the request has one)."""
        ...

    def automask(self, entry: WeightEntry, image: DecodedImage, amg_params: dict[str, Any]) -> AutoResult:
        """Automatic instance segmentation of the whole image."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for ``/sam/health/`` (cache hits/misses, loaded models)."""
        ...


def _call_with_supported(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with only the keyword arguments its signature accepts (all if it takes ``**kw``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return fn(*args, **kwargs)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


class HistosamBackend:
    """Real backend over histosam models; see the module docstring for caching and locking."""

    def __init__(self, device: str | None = None, cache_size: int = 8, max_models: int = 2,
                 limits: WorkLimits | None = None) -> None:
        self.device = device
        self.cache_size = max(1, int(cache_size))
        self.max_models = max(1, int(max_models))
        self.limits = limits or WorkLimits()
        self.lock = FairLock()
        self._fetch_guard = threading.Lock()
        self._fetch_locks: dict[str, threading.Lock] = {}  # weights url -> one first-use download at a time
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._predictors: dict[str, Any] = {}  # weights url -> Predictor (its own LRU of embeddings)
        self._seen: dict[str, OrderedDict[str, None]] = {}  # mirrors each Predictor's LRU, for the counters
        self._auto: OrderedDict[tuple, AutoResult] = OrderedDict()
        self._counts = {"embedding_hits": 0, "embedding_misses": 0, "automask_hits": 0, "automask_runs": 0}

    def _prefetch(self, entry: WeightEntry) -> None:
        """Download the files of a registry model *before* taking the inference lock (a first-use download
        takes minutes; other requests keep being served meanwhile). Cached files return at once."""
        if entry.factory is not None or entry.url in self._models:
            return

        source = entry.source or entry.url
        with self._fetch_guard:
            lock = self._fetch_locks.setdefault(entry.url, threading.Lock())
        with lock:
            from histosam.registry.loader import resolve_files

            _user_weights(entry, source, resolve_files)

    # -- caches (call with self.lock held) -------------------------------------------------------
    def _model(self, entry: WeightEntry) -> Any:
        model = self._models.get(entry.url)
        if model is not None:
            self._models.move_to_end(entry.url)
            return model
        if entry.factory is not None:
            model = entry.factory()
        else:
            import histosam

            source = entry.source or entry.url
            model = _user_weights(entry, source, lambda src: histosam.load_model(src, device=self.device))
        model.eval()
        self._models[entry.url] = model
        while len(self._models) > self.max_models:
            old, _ = self._models.popitem(last=False)
            self._predictors.pop(old, None)
            self._seen.pop(old, None)
        return model

    def _predictor(self, entry: WeightEntry, image: DecodedImage) -> Any:
        """The model's Predictor with ``image`` set (free when its embedding is cached)."""
        pred = self._predictors.get(entry.url)
        if pred is None:
            import histosam

            model = self._model(entry)
            pred = histosam.Predictor(model, device=self.device, cache_size=self.cache_size)
            self._predictors[entry.url] = pred
            self._seen[entry.url] = OrderedDict()
        else:
            self._models.move_to_end(entry.url)
        seen = self._seen[entry.url]
        if image.key in seen:
            seen.move_to_end(image.key)
            self._counts["embedding_hits"] += 1
        else:
            seen[image.key] = None
            self._counts["embedding_misses"] += 1
            while len(seen) > self.cache_size:
                seen.popitem(last=False)
        pred.set_image(image.pixels)
        return pred

    # -- ModelBackend ----------------------------------------------------------------------------
    def predict(
        self,
        entry: WeightEntry,
        image: DecodedImage,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        multimask: bool,
        mask: np.ndarray | None = None,
    ) -> PromptResult:
        n = 0 if points is None else len(points)
        if n > self.limits.max_points:
            raise RequestError(f"{n} prompt points; this server allows at most {self.limits.max_points} per request")
        self._prefetch(entry)
        with self.lock:
            pred = self._predictor(entry, image)
            kw: dict[str, Any] = {}
            if mask is not None:
                mask_input, origin = pred.mask_prompt(mask, points, box)
                kw = {"mask_input": mask_input, "mask_origin": origin}
            out = pred.predict(points=points, labels=labels, box=box, multimask=multimask, **kw)
        masks = np.asarray(_numpy(out.masks), dtype=bool)[0]
        scores = np.asarray(_numpy(out.scores), dtype=np.float32)[0]
        return PromptResult(masks=masks, scores=scores)

    def automask(self, entry: WeightEntry, image: DecodedImage, amg_params: dict[str, Any]) -> AutoResult:
        import histosam
        from histosam.inference.runtime import release_freed_memory

        h, w = image.shape
        if h * w > self.limits.max_automask_pixels:
            raise RequestError(automask_area_message(h, w, self.limits.max_automask_pixels))
        self._prefetch(entry)
        with self.lock:
            model = self._model(entry)
            mode = "ais" if getattr(model, "instance_decoder", None) is not None else "amg"
            params = check_amg_work(amg_params, self.limits) if mode == "amg" else {}
            key = (entry.url, image.key, mode, tuple(sorted(params.items())))
            hit = self._auto.get(key)
            if hit is not None:
                self._auto.move_to_end(key)
                self._counts["automask_hits"] += 1
                return hit
            self._counts["automask_runs"] += 1
            if mode == "amg":
                result = self._amg(entry, image, params)
            elif getattr(model, "class_decoder", None) is not None:
                result = _typed(model, image.pixels)
            else:
                labels = _call_with_supported(histosam.segment, image.pixels, model=model, mode=mode)
                result = AutoResult(labels=np.asarray(labels, dtype=np.uint32), mode=mode)
            self._auto[key] = result
            while len(self._auto) > 4:
                self._auto.popitem(last=False)
            release_freed_memory()  # a long-running server keeps no more than one run's peak (keep_freed_memory)
            return result

    def _amg(self, entry: WeightEntry, image: DecodedImage, params: dict[str, Any]) -> AutoResult:
        """AMG on the cached Predictor (embedding shared with prompts), keeping each mask's predicted IoU.

        Same result as ``histosam.segment(image, model, mode="amg", **params)``, which builds a fresh Predictor.
        """
        from histosam.postprocess.amg import AMGParams, generate_masks, masks_to_labels

        pred = self._predictor(entry, image)
        records = generate_masks(pred, image.pixels, AMGParams.from_dict(params))
        labels = masks_to_labels(records, image.shape)
        return AutoResult(labels=labels, mode="amg", scores=_label_scores(labels, records))

    def stats(self) -> dict[str, Any]:
        # read without the inference lock, so /sam/health/ answers while requests are queued
        for _ in range(100):
            try:
                return {
                    **dict(self._counts),
                    "models_loaded": list(self._models),
                    "embeddings_cached": sum(len(v) for v in list(self._seen.values())),
                    "cache_size": self.cache_size,
                    "busy": self.lock.locked(),
                    "queued": self.lock.waiting,
                }
            except RuntimeError:  # a cache changed size while being read: read again
                continue
        with self.lock:  # pragma: no cover - only under extreme churn
            return {**self._counts, "models_loaded": list(self._models), "cache_size": self.cache_size}


def _typed(model: Any, pixels: np.ndarray) -> AutoResult:
    """AIS with the model's class head: labels, and each nucleus' class (name, colour) and probabilities."""
    from histosam.pipeline.image_job import class_colors
    from histosam.tasks import nuclei

    typed = nuclei.segment_typed_nuclei(pixels, model)
    names = tuple(typed.class_names)
    colors = class_colors(model, names)
    classes = {i: (names[k], list(colors[k])) for i, k in enumerate(typed.classes.tolist(), start=1)}
    probs = {i: {n: float(v) for n, v in zip(names, row)}
             for i, row in enumerate(typed.probabilities.tolist(), start=1)}
    return AutoResult(labels=np.asarray(typed.labels, dtype=np.uint32), mode="ais", classes=classes,
                      class_probabilities=probs)


def automask_area_message(h: int, w: int, limit: int) -> str:
    return (
        f"automatic segmentation of a {w}×{h} = {w * h} pixel image; this server allows at most {limit} pixels "
        "per automask request (zoom in or shrink the viewer, or start the server with a larger "
        "--max-automask-pixels)"
    )


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _label_scores(labels: np.ndarray, records: list[Any]) -> dict[int, float]:
    """Predicted IoU of the mask each label came from. Masks are painted largest first, so a label's pixel
    belongs to the smallest mask covering it (the later one among equal areas)."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    rows, cols = np.unravel_index(first, labels.shape)
    areas = np.array([r.area for r in records])
    scores: dict[int, float] = {}
    for i, r, c in zip(ids.tolist(), rows.tolist(), cols.tolist()):
        if i == 0:
            continue
        cover = [k for k, rec in enumerate(records) if rec.segmentation[r, c]]
        best = min(cover, key=lambda k: (areas[k], -k))
        scores[i] = float(records[best].predicted_iou)
    return scores


def _user_weights(entry: WeightEntry, source: str, load: Any) -> Any:
    """``load(source)``; any failure but a ``HistosamError`` becomes a one-line ``CheckpointError`` naming the
    weights (user-supplied weights: any failure is their file's)."""
    from histosam.errors import CheckpointError, HistosamError

    try:
        return load(source)
    except HistosamError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load weights {entry.name!r} from {source}: {type(exc).__name__}: {exc}") from exc
