"""The joint training loop (micro-sam ``JointSamTrainer``): interactive SAM objective + instance decoder.

Per iteration (batch of ``B`` patches, ``P×P``, resized to the model's input frame when the model uses
``resize_longest_side``):

1. SAM step: sample ``n_objects`` objects per image (truncated to the batch minimum); prompt = 1 random
   positive point (multimask) on even iterations, a jittered box (single mask) on odd ones; run
   ``n_sub_iterations`` rounds, each adding 1 positive + 1 negative correction point per object and
   feeding the chosen low-res mask back with probability ``mask_prob``. Loss = mean over rounds and
   images of Dice(min over outputs) + IoU MSE. Backward + optimiser step.
2. Decoder step (if the model has an instance decoder and ``with_instance_decoder``): the encoder is
   run again (its weights just changed; reused detached when frozen), ``distance_loss`` of the decoder
   maps vs the PathoSAM targets. Backward + step with the same AdamW.

``ReduceLROnPlateau`` steps once per epoch on the validation loss (SAM loss + decoder loss / 3); without
validation images on the training loss. Randomness: torch seeded by ``seed``; the prompt Generator is
``SeedSequence([seed, epoch, 1])`` per epoch, the data per (seed, epoch, index), so an epoch's results
do not depend on earlier interruptions (an interrupted epoch restarts from its beginning on resume).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from histosam.errors import ParameterError
from histosam.io.atomic import atomic_torch_save
from histosam.train.checkpoint import load_train_state, save_model
from histosam.train.config import TrainConfig
from histosam.train.losses import distance_loss, sam_loss
from histosam.train.prompts import (
    boxes_from_masks,
    correction_points,
    frame_origin,
    prompt_kind,
    random_points,
    sample_batch_objects,
)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_trainable(model: torch.nn.Module, mode: str) -> list[torch.nn.Parameter]:
    """Freeze/unfreeze by finetuning mode; returns the trainable parameters.

    ``mask_decoder``: mask decoder only; ``encoder_and_mask_decoder``: image encoder + mask decoder;
    ``all``: everything; ``decoders``: mask decoder + instance decoder (frozen image encoder).
    The prompt encoder trains in ``all`` only. The first three are Kim et al.'s scenarios (``scenario`` in the
    config, :data:`histosam.train.config.SCENARIOS`); the mask decoder is whichever the model has (SAM's or the
    refine decoder).
    """
    parts = {
        "mask_decoder": ["mask_decoder"],
        "encoder_and_mask_decoder": ["image_encoder", "mask_decoder"],
        "all": ["image_encoder", "prompt_encoder", "mask_decoder", "instance_decoder"],
        "decoders": ["mask_decoder", "instance_decoder"],
    }[mode]
    for p in model.parameters():
        p.requires_grad_(False)
    for name in parts:
        mod = getattr(model, name, None)
        if mod is not None:
            for p in mod.parameters():
                p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


class Trainer:
    """Runs ``TrainConfig`` on a model and datasets (``PatchDataset``-like: items ``(image, inst, targets)``)."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, train_ds, val_ds=None) -> None:
        self.cfg, self.model, self.train_ds, self.val_ds = cfg, model, train_ds, val_ds
        self.device = resolve_device(cfg.device)
        self.model.to(self.device)
        self.params = set_trainable(model, cfg.finetune)
        if getattr(model, "instance_decoder", None) is not None and hasattr(model.instance_decoder, "set_bn_mode"):
            model.instance_decoder.set_bn_mode("train")  # learn running statistics (for bn_mode="eval" later)
        self.encoder_frozen = not any(p.requires_grad for p in model.image_encoder.parameters())
        self.train_decoder = bool(cfg.with_instance_decoder and model.instance_decoder is not None
                                  and cfg.finetune in ("all", "decoders"))
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=cfg.scheduler_factor, patience=cfg.scheduler_patience)
        self.out = Path(cfg.output_dir)
        self.epoch, self.step, self.best = 0, 0, math.inf
        self.skipped_steps = 0
        self.origin = (0, 0)  #: (row, col) of the current batch's patches in the padded frame (frame_placement)
        from histosam.inference.runtime import cpu_has_fast_bf16

        self.amp = bool(cfg.amp and (self.device.type == "cuda" or (cfg.cpu_amp and cpu_has_fast_bf16())))
        if self.device.type == "cpu":
            self.model.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ frames
    def _to_frame(self, images: torch.Tensor, rng: np.random.Generator | None = None
                  ) -> tuple[torch.Tensor, float, tuple[int, int]]:
        """``B×3×P×P`` 0–255 → preprocessed ``B×3×S×S``, the patch→input scale and the resized size. With
        ``frame_placement: random`` (native-resolution models padded to the frame) the patches sit at a random
        place of the frame (``self.origin``, drawn from ``rng``), else at its top-left corner."""
        p = images.shape[-1]
        s = self.model.image_size
        resize = getattr(self.model.config, "resize_longest_side", True)
        self.origin = (0, 0)
        if not resize and self.cfg.pad_to_frame and self.cfg.frame_placement == "random" and rng is not None \
                and p < s:
            self.origin = frame_origin(p, s, self.model.embedding_stride, rng)
            r0, c0 = self.origin
            x = self.model.preprocess(images, pad_to=p)
            return F.pad(x, (c0, s - p - c0, r0, s - p - r0)), 1.0, (p, p)
        if not resize and not self.cfg.pad_to_frame:
            if p % 16:
                raise ParameterError(f"patch size {p} must be a multiple of 16 without pad_to_frame")
            return self.model.preprocess(images, pad_to=p), 1.0, (p, p)
        scale = s / p if resize else 1.0
        if p > s and not resize:
            raise ParameterError(f"patch size {p} exceeds the model's input frame {s}")
        if scale != 1.0:
            size = int(round(p * scale))
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True)
        hw = tuple(images.shape[-2:])
        return self.model.preprocess(images), scale, hw

    def _frame_side(self, p: int) -> int:
        resize = getattr(self.model.config, "resize_longest_side", True)
        return p if (not resize and not self.cfg.pad_to_frame) else self.model.image_size

    def _to_patch(self, x: torch.Tensor, hw: tuple[int, int], p: int) -> torch.Tensor:
        """Maps/logits in (or at a fraction of) the padded input frame → patch resolution ``p×p``."""
        s = self._frame_side(p)
        if x.shape[-1] != s:
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        r0, c0 = self.origin
        x = x[..., r0: r0 + hw[0], c0: c0 + hw[1]]
        if x.shape[-1] != p:
            x = F.interpolate(x, size=(p, p), mode="bilinear", align_corners=False)
        return x

    # ------------------------------------------------------------------ losses
    def sam_objective(self, emb: torch.Tensor, inst: np.ndarray, scale: float, hw, rng: np.random.Generator,
                      iteration: int) -> torch.Tensor | None:
        """Iterative-prompting loss for a batch; ``None`` when the batch has no objects."""
        cfg = self.cfg
        if cfg.sam_images is not None and cfg.sam_images < inst.shape[0]:
            inst = inst[: cfg.sam_images]
        ids = sample_batch_objects(inst, cfg.n_objects, rng)
        if len(ids[0]) == 0:
            return None
        kind, multimask = prompt_kind(iteration)
        p = inst.shape[-1]
        r0, c0 = self.origin
        shift = np.array([c0, r0], np.float32)  # patch (x, y) -> frame, after the scale
        # all objects of all images in one decoder batch: K = B·n objects, each with its image's embedding
        gt = np.concatenate([inst[b][None] == ids[b][:, None, None] for b in range(inst.shape[0])])  # K×P×P
        owner = np.repeat(np.arange(inst.shape[0]), [len(i) for i in ids])
        emb_k = emb[torch.from_numpy(owner).to(emb.device)]
        gt_t = torch.from_numpy(gt[:, None]).to(self.device)
        low_res = cfg.sam_loss_resolution == "low"
        gt_low = None
        coords = labels = boxes = mask_in = None
        if kind == "point":
            coords = torch.from_numpy(random_points(gt, rng) * scale + shift).to(self.device)
            labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=self.device)
        else:
            boxes = boxes_from_masks(gt, rng, cfg.box_distortion, shift=cfg.box_shift)
            boxes = torch.from_numpy(boxes * scale + np.tile(shift, 2)).to(self.device)
        total = emb.new_zeros(())
        for sub in range(cfg.n_sub_iterations):
            low, iou = self.model.decode_masks(emb_k, coords, labels, boxes, mask_in,
                                               multimask=multimask and sub == 0)
            if low_res:
                if gt_low is None:
                    gt_low = self._gt_low_res(gt_t, low.shape[-1], hw, p)
                loss, _, _ = sam_loss(low.float(), iou.float(), gt_low, cfg.mask_loss, cfg.nfl_gamma)
                logits = None
            else:
                logits = self._to_patch(low, hw, p)
                loss, _, _ = sam_loss(logits.float(), iou.float(), gt_t, cfg.mask_loss, cfg.nfl_gamma)
            total = total + loss
            if sub == cfg.n_sub_iterations - 1:
                break
            with torch.no_grad():
                best = iou.argmax(dim=1)
                rows = torch.arange(len(best), device=best.device)
                if logits is None:
                    logits = self._to_patch(low.detach(), hw, p)
                pred = (logits[rows, best] > 0).cpu().numpy()
                low_best = low[rows, best][:, None].detach()
            new_c, new_l = correction_points(gt, pred, rng)
            new_c = torch.from_numpy(new_c * scale + shift).to(self.device)
            new_l = torch.from_numpy(new_l).to(self.device)
            coords = new_c if coords is None else torch.cat([coords, new_c], 1)
            labels = new_l if labels is None else torch.cat([labels, new_l], 1)
            mask_in = low_best if rng.random() < cfg.mask_prob else None
        # every image contributes the same number of objects (sample_batch_objects), so the mean over all K
        # objects equals the mean of the per-image means
        return total / cfg.n_sub_iterations

    def _gt_low_res(self, gt: torch.Tensor, size: int, hw, p: int) -> torch.Tensor:
        """Object masks ``K×1×P×P`` → the mask decoder's low-res grid (``K×1×size×size``), area-averaged then
        binarised at 0.5; the padded part of the frame is background."""
        s = self._frame_side(p)
        frame = torch.zeros((gt.shape[0], 1, s, s), dtype=torch.float32, device=gt.device)
        g = gt.float()
        if g.shape[-2:] != tuple(hw):
            g = F.interpolate(g, size=hw, mode="bilinear", align_corners=False)
        r0, c0 = self.origin
        frame[..., r0: r0 + hw[0], c0: c0 + hw[1]] = g
        return F.adaptive_avg_pool2d(frame, size) >= 0.5

    def decoder_objective(self, frame: torch.Tensor, emb, skips, hw, targets: torch.Tensor) -> torch.Tensor:
        maps = self.model.decode_instances(emb, skips, frame)
        return distance_loss(self._to_patch(maps.float(), hw, targets.shape[-1]), targets)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _step(self) -> None:
        """Optimiser step with gradient clipping; a step with non-finite gradients is skipped."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return
        if self.cfg.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if not torch.isfinite(norm):
            self.skipped_steps += 1
            self.opt.zero_grad(set_to_none=True)
            return
        self.opt.step()

    def train_step(self, images, inst, targets, rng: np.random.Generator) -> dict[str, float]:
        """One iteration: SAM step, then decoder step (or one joint step, ``joint_step``). Returns the losses."""
        self.model.train()
        for child in self.model.children():  # frozen parts stay frozen: no BatchNorm statistics drift either
            if not any(p.requires_grad for p in child.parameters()):
                child.eval()
        images, targets = images.to(self.device), targets.to(self.device)
        inst_np = inst.numpy()
        out: dict[str, float] = {}
        frame, scale, hw = self._to_frame(images, rng)
        if self.device.type == "cpu":
            frame = frame.contiguous(memory_format=torch.channels_last)
        run_sam = self.step % max(1, self.cfg.sam_every) == 0
        if self.cfg.joint_step:
            self.opt.zero_grad(set_to_none=True)
            with self._autocast():
                with torch.set_grad_enabled(not self.encoder_frozen):
                    emb, skips = self.model.encode(frame)
                total = emb.new_zeros(())
                if run_sam:
                    loss = self.sam_objective(emb, inst_np, scale, hw, rng, self.step // max(1, self.cfg.sam_every))
                    if loss is not None:
                        total = total + loss
                        out["sam_loss"] = float(loss.detach())
                if self.train_decoder:
                    dl = self.decoder_objective(frame, emb, skips, hw, targets)
                    total = total + dl
                    out["decoder_loss"] = float(dl.detach())
            if total.requires_grad:
                total.backward()
                self._step()
            self.step += 1
            return out
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            if self.encoder_frozen:
                with torch.no_grad():
                    emb, skips = self.model.encode(frame)
            else:
                emb, skips = self.model.encode(frame)
            loss = self.sam_objective(emb, inst_np, scale, hw, rng, self.step) if run_sam else None
        if loss is not None:
            loss.backward()
            self._step()
            out["sam_loss"] = float(loss.detach())
        if self.train_decoder:
            self.opt.zero_grad(set_to_none=True)
            with self._autocast():
                if not self.encoder_frozen:
                    emb, skips = self.model.encode(frame)
                dl = self.decoder_objective(frame, emb.detach() if self.encoder_frozen else emb,
                                            [s.detach() for s in skips] if self.encoder_frozen else skips,
                                            hw, targets)
            dl.backward()
            self._step()
            out["decoder_loss"] = float(dl.detach())
        self.step += 1
        return out

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss (SAM loss + decoder loss / 3) and AIS mSA over the validation patches."""
        if self.val_ds is None or len(self.val_ds) == 0:
            return {}
        self.model.eval()
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, 0, 2]))
        n = len(self.val_ds) if self.cfg.val_max_images is None else min(len(self.val_ds), self.cfg.val_max_images)
        losses, msas = [], []
        for i in range(n):
            image, inst, targets = self.val_ds[i]
            images, targets = image[None].to(self.device), targets[None].to(self.device)
            frame, scale, hw = self._to_frame(images, rng)
            with self._autocast():
                emb, skips = self.model.encode(frame)
                sl = self.sam_objective(emb, inst[None].numpy(), scale, hw, rng, i)
                loss = float(sl) if sl is not None else 0.0
                if self.model.instance_decoder is not None and self.cfg.with_instance_decoder:
                    maps = self._to_patch(self.model.decode_instances(emb, skips, frame).float(), hw,
                                          targets.shape[-1])
                    loss += float(distance_loss(maps, targets)) / 3.0
                    msas.append(self._msa(maps[0].cpu().numpy(), inst.numpy()))
            losses.append(loss)
        res = {"val_loss": float(np.mean(losses))}
        if self.cfg.val_whole_images and getattr(self.val_ds, "images", None) is not None \
                and self.model.instance_decoder is not None:
            msas = self._whole_image_msa(n)
        msas = [m for m in msas if m is not None]
        if msas:
            res["val_msa"] = float(np.mean(msas))
        return res

    def _whole_image_msa(self, n: int) -> list[float | None]:
        """AIS mSA of ``histosam.segment`` on the first ``n`` whole validation images (inference path)."""
        try:
            from histosam.automatic import segment
            from histosam.evaluation.metrics import mean_segmentation_accuracy
        except ImportError:
            return []
        self.model.eval()
        out = []
        for i in range(n):
            image, gt = self.val_ds.images[i], self.val_ds.labels[i]
            seg = segment(image, model=self.model, precision="fp32", device=str(self.device),
                          on_incomplete="warn", context=64)
            out.append(mean_segmentation_accuracy(gt.astype(np.uint32), seg))
        return out

    def _msa(self, maps: np.ndarray, inst: np.ndarray) -> float | None:
        try:
            from histosam.evaluation.metrics import mean_segmentation_accuracy
            from histosam.postprocess.ais import watershed_from_maps
        except ImportError:
            return None
        params = dict(getattr(self.model.config, "postprocess", {}) or {})
        try:
            seg = watershed_from_maps(maps.astype(np.float32), **params)
        except TypeError:
            seg = watershed_from_maps(maps.astype(np.float32))
        return mean_segmentation_accuracy(inst, seg)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The resumable training state: tensors and plain Python values only (read back with
        ``weights_only=True`` by ``histosam.train.checkpoint.load_train_state``)."""
        from histosam.train.checkpoint import plain_train_state

        return plain_train_state({
            "format": "histosam-train-state", "version": 1,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "epoch": int(self.epoch), "step": int(self.step), "best": float(self.best),
            "torch_rng": torch.get_rng_state(), "config": self.cfg.to_dict()})

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a state of :meth:`state`; a state that does not fit this model/optimiser (another
        architecture or finetune mode in the same output_dir) is a one-line ``CheckpointError``."""
        from histosam.errors import CheckpointError

        latest = self.out / "latest.pt"
        try:
            self.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            names = set(self.model.state_dict())
            given = set(state["model"]) if isinstance(state.get("model"), dict) else set()
            missing, extra = names - given, given - names
            detail = (f"{len(missing)} missing and {len(extra)} unexpected weights" if missing or extra
                      else "weights of other shapes")
            raise CheckpointError(
                f"{latest} was written for another model ({detail}); delete it or use another output_dir, "
                "or pass --no-resume to start from scratch") from exc
        try:
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            epoch, step, best = int(state["epoch"]), int(state["step"]), float(state["best"])
            torch.set_rng_state(state["torch_rng"])
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(
                f"{latest} does not fit this training run (another finetune mode or a corrupt state: "
                f"{type(exc).__name__}: {first}); delete it or use another output_dir, or pass --no-resume "
                "to start from scratch") from exc
        self.epoch, self.step, self.best = epoch, step, best

    def _log(self, record: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ fit
    def fit(self, progress: bool = True) -> dict[str, Any]:
        """Train for ``epochs`` (or until ``max_minutes``), resuming from ``latest.pt`` when allowed.

        Returns a summary ``{"epochs_done", "step", "stopped_early", "history": [per-epoch records]}``.
        """
        from tqdm import tqdm

        cfg = self.cfg
        latest = self.out / "latest.pt"
        if cfg.resume and latest.exists():
            self.restore(load_train_state(latest))
        start, history, stopped = time.monotonic(), [], False
        loader_kw = dict(batch_size=cfg.batch_size, shuffle=False, drop_last=True, num_workers=cfg.num_workers)
        while self.epoch < cfg.epochs and not stopped:
            self.train_ds.set_epoch(self.epoch)
            loader = torch.utils.data.DataLoader(self.train_ds, **loader_kw)
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, self.epoch, 1]))
            sums: dict[str, list[float]] = {}
            bar = tqdm(loader, desc=f"epoch {self.epoch}", disable=not progress, leave=False)
            for images, inst, targets in bar:
                for k, v in self.train_step(images, inst, targets, rng).items():
                    sums.setdefault(k, []).append(v)
                bar.set_postfix({k: f"{v[-1]:.4f}" for k, v in sums.items()})
                if cfg.max_minutes is not None and time.monotonic() - start > cfg.max_minutes * 60:
                    stopped = True
                    break
            if stopped:  # the interrupted epoch is run again on resume
                break
            record = {"epoch": self.epoch, "step": self.step, "lr": self.opt.param_groups[0]["lr"],
                      **{k: float(np.mean(v)) for k, v in sums.items()}, **self.validate(),
                      "minutes": (time.monotonic() - start) / 60}
            metric = record.get("val_loss", record.get("sam_loss", 0.0) + record.get("decoder_loss", 0.0) / 3)
            self.sched.step(metric)
            self.epoch += 1
            if metric < self.best:
                self.best = metric
                save_model(self.out / "best.pt", self.model)
            self._log(record)
            history.append(record)
            atomic_torch_save(self.state(), latest)
        atomic_torch_save(self.state(), latest)
        save_model(self.out / "final.pt", self.model)
        return {"epochs_done": self.epoch, "step": self.step, "stopped_early": stopped, "history": history}


def initial_model(cfg: TrainConfig) -> torch.nn.Module:
    """The model to finetune from ``cfg.checkpoint``: any format ``histosam.load_model`` reads (registry name,
    SAM ``.pth``, micro-sam/PathoSAM ``model_state`` + ``decoder_state``, histosam). With
    ``with_instance_decoder`` and a checkpoint without one, a new (randomly initialised) decoder is attached."""
    from histosam.models.build import build_model
    from histosam.models.registry import default_instance_head
    from histosam.registry.loader import load_model

    model = load_model(cfg.checkpoint, device="cpu")
    arch = model.config.architecture
    if cfg.model and cfg.model != arch:
        from histosam.errors import CheckpointError

        raise CheckpointError(f"checkpoint {cfg.checkpoint} is a {arch} model, but the config says model: {cfg.model}")
    if cfg.with_instance_decoder and model.instance_decoder is None:
        kind = default_instance_head(arch)
        fresh = build_model(arch, instance_decoder=kind, **dict(model.config.overrides))
        model.instance_decoder = fresh.instance_decoder
        model.config.instance_decoder = kind
    model.config.name = f"{model.config.name}-finetuned"
    return model


def apply_mask_decoder(cfg: TrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    """Give ``model`` the config's ``mask_decoder`` (``refine``: Kim et al.'s decoder initialised from the model's
    SAM decoder, :func:`histosam.models.refine_decoder.use_mask_decoder`, with ``mask_decoder_depth`` blocks);
    ``None`` keeps the model's decoder."""
    if cfg.mask_decoder is None:
        if cfg.mask_decoder_depth is not None:
            raise ParameterError("mask_decoder_depth needs mask_decoder: refine")
        return model
    from histosam.models.refine_decoder import use_mask_decoder

    options = {"depth": cfg.mask_decoder_depth} if cfg.mask_decoder_depth is not None else None
    if cfg.mask_decoder == "sam" and options:
        raise ParameterError("mask_decoder_depth is an option of the refine decoder (mask_decoder: refine)")
    return use_mask_decoder(model, cfg.mask_decoder, options)


def build_and_train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Build the model and data of ``cfg`` and train (the ``histosam train`` entry point)."""
    from histosam.models.build import build_model
    from histosam.models.registry import default_instance_head
    from histosam.train.data import PatchDataset, list_samples, read_sample, split_samples

    torch.manual_seed(cfg.seed)
    if cfg.checkpoint:
        model = initial_model(cfg)
    else:
        head = default_instance_head(cfg.model) if cfg.with_instance_decoder else None
        model = build_model(cfg.model, instance_decoder=head)
    apply_mask_decoder(cfg, model)
    train_s, val_s = split_samples(list_samples(cfg.data_dirs), cfg.val_ids, cfg.val_fraction, cfg.seed)
    data_kw = dict(min_instances=cfg.min_instances, min_size=cfg.min_size, augment=cfg.augment,
                   scale_range=cfg.scale_range, hed=cfg.hed_jitter, brightness=cfg.brightness,
                   contrast=cfg.contrast)
    tr = [read_sample(s) for s in train_s]
    train_ds = PatchDataset([a for a, _ in tr], [b for _, b in tr], cfg.patch_size,
                            cfg.iterations_per_epoch * cfg.batch_size, cfg.seed, **data_kw)
    val_ds = None
    if val_s:
        va = [read_sample(s) for s in val_s]
        val_ds = PatchDataset([a for a, _ in va], [b for _, b in va], cfg.patch_size, len(va), cfg.seed,
                              random=False, **data_kw)
    return Trainer(cfg, model, train_ds, val_ds).fit(progress)
