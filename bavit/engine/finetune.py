"""Sparse fine-tuning of YOLOS on FG tokens only (paper §4.2, "BAViT+YOLOS-F"); the command line is
``python -m bavit finetune`` (:mod:`bavit.cli.finetune`).

Every step runs the pruned YOLOS (:func:`bavit.pruning.yolos.patch_yolos`) on the kept patch tokens of each image
and optimises the loss transformers computes for YOLOS when ``labels`` are passed (Hungarian matching, CE +
L1 + GIoU; needs scipy). The keep mask comes from:

* ``mask_source="bavit"`` (``--bavit CKPT``): BAViT FG probabilities, thresholded (``--threshold``) or top-k
  (``--keep-ratio``), then CCA and resampling to YOLOS' grid -- the same masks the pruned model sees at inference,
  which is what the paper fine-tunes on.
* ``mask_source="gt-boxes"`` (no ``--bavit``): patches at least half covered by a ground-truth box
  (:func:`bavit.core.labels.labels_from_boxes`, coverage rule, tau 0.5) on YOLOS' grid, then CCA. An oracle mask:
  useful without a trained BAViT, but it keeps a little less background than BAViT does.

Conventions shared with ``python -m bavit train``: a tqdm bar with the running loss and images/s, one JSON line
per epoch in ``OUT/metrics.jsonl``, and an atomic checkpoint after every epoch in ``OUT/checkpoint/``:
``save_pretrained`` files (loadable with ``--detector OUT/checkpoint``) + ``train_state.safetensors`` (AdamW state
and progress, :mod:`bavit.engine.state`; no pickles) + ``train_state.json`` (epoch, step, settings, to read).
The folder is swapped in with renames (:func:`bavit.files.atomic_dir`), so an interrupt leaves the previous
epoch's checkpoint whole. ``--resume`` continues after the saved epoch; the shuffle order depends only on (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..box_ops import box_xywh_to_xyxy
from ..core.cca import cca
from ..core.labels import BOX_TAU, labels_from_boxes
from ..core.model import bavit_pixels
from ..data.coco import CocoDetection, label_to_category, resolve_paths, yolos_targets
from ..errors import CheckpointError, ConfigError, DataError
from ..files import atomic_dir, recover_dir, remove_stale_temps
from ..predictor import Predictor
from ..pruning.detector import YOLOS_SIZE, yolos_grid, yolos_pixels
from ..pruning.settings import (
    PruningSettings,
    cca_steps_value,
    keep_ratio_value,
    threshold_value,
)
from .state import load_training_state, save_training_state

MASK_SOURCES = ("bavit", "gt-boxes")
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "train_state.json"  # readable copy of the progress
TRAIN_STATE_FILE = "train_state.safetensors"  # optimizer + progress (bavit.engine.state)


@dataclass
class FinetuneConfig:
    """Optimisation and masking settings (stored in ``train_state.json``)."""

    epochs: int = 30  # paper: 30 epochs of sparse fine-tuning
    batch_size: int = 8
    lr: float = 2.5e-5  # AdamW, constant
    weight_decay: float = 1e-4
    clip_grad: float = 0.1  # max gradient norm (DETR / YOLOS default); 0 disables
    image_size: int = YOLOS_SIZE
    mask_source: str = "gt-boxes"
    threshold: float | None = 0.5  # BAViT FG-probability threshold (mask_source="bavit")
    keep_ratio: float | None = None  # top-k fraction instead of the threshold
    cca_steps: int = 3
    box_tau: float = BOX_TAU  # gt-boxes: a patch is FG when at least this fraction of it lies in a box
    seed: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        if self.mask_source not in MASK_SOURCES:
            raise ConfigError(f"mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        self.cca_steps = cca_steps_value(self.cca_steps)
        if self.keep_ratio is not None:
            self.keep_ratio = keep_ratio_value(self.keep_ratio)
        if self.threshold is not None:
            self.threshold = threshold_value(self.threshold)


class FinetuneSamples(torch.utils.data.Dataset):
    """``dataset[i] -> dict``: ``pixels [3, S, S]`` (YOLOS input), ``target`` (YOLOS labels dict), and either
    ``bavit_pixels [3, 384, 384]`` (mask_source="bavit") or ``gt_keep bool [S/p, S/p]`` (mask_source="gt-boxes")."""

    def __init__(self, images: CocoDetection, category_to_label: dict[int, int], cfg: FinetuneConfig,
                 patch_size: int, bavit_config=None):
        self.images, self.category_to_label, self.cfg = images, category_to_label, cfg
        self.grid = yolos_grid(patch_size, cfg.image_size)
        self.bavit_config = bavit_config

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = self.images[index]
        sample = {
            "pixels": yolos_pixels(item.image, self.cfg.image_size),
            "target": yolos_targets(item.anns, item.width, item.height, self.category_to_label),
        }
        if self.bavit_config is not None:
            sample["bavit_pixels"] = bavit_pixels(item.image, self.bavit_config)
        else:
            boxes = box_xywh_to_xyxy([a["bbox"] for a in item.anns]).tolist()
            grid = labels_from_boxes(boxes, (item.width, item.height), (self.grid, self.grid), "coverage",
                                     self.cfg.box_tau)
            sample["gt_keep"] = cca(grid.bool(), self.cfg.cca_steps)
        return sample


def collate(samples: list[dict]) -> dict:
    batch = {"pixels": torch.stack([s["pixels"] for s in samples]), "targets": [s["target"] for s in samples]}
    for key in ("bavit_pixels", "gt_keep"):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


@torch.no_grad()
def bavit_keep_mask(predictor: Predictor, bavit_pixels: torch.Tensor, cfg: FinetuneConfig) -> torch.Tensor:
    """``[B, 3, 384, 384]`` -> ``bool [B, grid, grid]``: the inference-time masks, as the app computes them
    (the Predictor's BAViT runner and :meth:`~bavit.predictor.Predictor.select`)."""
    settings = PruningSettings(threshold=None if cfg.keep_ratio is not None else cfg.threshold,
                               keep_ratio=cfg.keep_ratio, cca_steps=cfg.cca_steps)
    return predictor.select(predictor.bavit_runner(bavit_pixels), settings)[0].keep_mask


def train_step(model, optimizer: torch.optim.Optimizer, pixels: torch.Tensor, keep_mask: torch.Tensor | None,
               targets: list[dict], clip_grad: float = 0.0) -> dict[str, float]:
    """One optimisation step of a patched YOLOS on the kept tokens.

    Args:
        pixels: ``[B, 3, S, S]``; keep_mask: ``bool [B, S/p, S/p]`` (None = dense);
        targets: per image ``{"class_labels": int64 [n], "boxes": float [n, 4] cxcywh in [0, 1]}``.
    Returns:
        ``{"loss", "loss_ce", "loss_bbox", "loss_giou", ...}`` as floats (before the update).
    """
    model.train()
    outputs = model(pixels, keep_mask=keep_mask, labels=targets)
    optimizer.zero_grad(set_to_none=True)
    outputs.loss.backward()
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    logged = {"loss": float(outputs.loss.detach())}
    logged.update({key: float(value.detach()) for key, value in (outputs.loss_dict or {}).items()
                   if torch.is_tensor(value) and value.numel() == 1})
    return logged


def make_optimizer(model, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)


def save_finetune_checkpoint(output: str | Path, model, optimizer: torch.optim.Optimizer, state: dict) -> Path:
    """Write ``OUT/checkpoint/`` atomically (:func:`bavit.files.atomic_dir`): the model's ``save_pretrained`` files,
    ``train_state.safetensors`` (the optimizer and ``state`` as progress, :mod:`bavit.engine.state`) and
    ``train_state.json`` (``state`` again, for people to read). At every moment one complete checkpoint exists.

    Args:
        output: the run folder ``OUT``.
        state: JSON-able progress: ``epoch``, ``step``, ``base``, ``config``, ...
    Returns:
        ``OUT/checkpoint``.
    """
    final = Path(output) / CHECKPOINT_DIR
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        save_training_state(tmp / TRAIN_STATE_FILE, optimizer, **state)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    return final


def checkpoint_dir(output: str | Path) -> Path:
    """``OUT/checkpoint``, restoring the old copy when an interrupt fell between the two renames (recover_dir)."""
    return recover_dir(Path(output) / CHECKPOINT_DIR)


def load_train_state(checkpoint: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer from ``checkpoint/train_state.safetensors``; returns the saved progress (the same dict
    as ``train_state.json``: ``epoch``, ``step``, ``base``, ``config``, ...)."""
    state_file = Path(checkpoint) / TRAIN_STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"--resume: {checkpoint} has no {TRAIN_STATE_FILE}; not a fine-tune checkpoint")
    return load_training_state(state_file, optimizer)


def finetune(detector, images: CocoDetection, cfg: FinetuneConfig, output: str | Path, bavit=None,
             resume: bool = False, progress: bool = True, max_steps: int | None = None, base: str | None = None):
    """Sparse fine-tuning; returns the patched model after the last epoch (eval mode).

    Args:
        detector: a ``YolosForObjectDetection`` to start from (ignored with ``resume``).
        images: training images + COCO annotations.
        cfg: settings; ``cfg.mask_source == "bavit"`` needs ``bavit``.
        output: folder for ``checkpoint/`` and ``metrics.jsonl``.
        bavit: a :class:`bavit.core.model.BAViT` for the keep masks.
        resume: continue from ``output/checkpoint`` after its saved epoch.
        max_steps: stop after this many optimizer steps in total (tests).
        base: name of the starting detector, recorded in the train state.
    """
    from tqdm import tqdm

    from ..pruning.detector import load_yolos_model
    from ..pruning.yolos import patch_yolos

    if cfg.mask_source == "bavit" and bavit is None:
        raise ConfigError("mask_source 'bavit' needs a BAViT checkpoint (--bavit)")
    if len(images) == 0:
        raise DataError("no training images")
    output = Path(output)
    checkpoint = checkpoint_dir(output)
    remove_stale_temps(checkpoint)  # a killed run's half-written .checkpoint-XXXXXXXX folder
    if resume:
        if not (checkpoint / "config.json").is_file():
            raise CheckpointError(f"--resume: no fine-tune checkpoint at {checkpoint}")
        detector = load_yolos_model(checkpoint)
    model = patch_yolos(detector)
    if model.config.auxiliary_loss:
        model.config.auxiliary_loss = False  # intermediate-layer losses are not defined on pruned sequences
    patch = model.config.patch_size
    yolos_grid(patch, cfg.image_size)  # a clear error for an input size that is not a multiple of the patch
    category_to_label = {cat: label for label, cat in label_to_category(model.config.id2label, images.coco).items()}
    samples = FinetuneSamples(images, category_to_label, cfg, patch, bavit.config if bavit is not None else None)
    optimizer = make_optimizer(model, cfg)
    start_epoch, step = 0, 0
    if resume:
        state = load_train_state(checkpoint, optimizer)
        start_epoch, step = int(state["epoch"]), int(state.get("step", 0))
        base = base or state.get("base")
    predictor = None
    if cfg.mask_source == "bavit":  # BAViT's side of the app's pipeline, on torch (the Predictor copies the model)
        predictor = Predictor(bavit=bavit, detector=None, backend="torch", image_size=cfg.image_size)
    metrics_file = output / "metrics.jsonl"
    output.mkdir(parents=True, exist_ok=True)
    steps_run = 0
    if start_epoch >= cfg.epochs and progress:
        print(f"{checkpoint} already holds epoch {start_epoch} of {cfg.epochs}: nothing to do", flush=True)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(samples, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                                             collate_fn=collate, num_workers=cfg.workers)
        started = time.perf_counter()
        sums: dict[str, float] = {}
        seen, kept, total = 0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
        for batch in bar:
            if cfg.mask_source == "bavit":
                keep_mask = bavit_keep_mask(predictor, batch["bavit_pixels"], cfg)
            else:
                keep_mask = batch["gt_keep"]
            logged = train_step(model, optimizer, batch["pixels"], keep_mask, batch["targets"], cfg.clip_grad)
            count = len(batch["targets"])
            for key, value in logged.items():
                sums[key] = sums.get(key, 0.0) + value * count
            seen += count
            kept += int(keep_mask.sum())
            total += keep_mask.numel()
            step += 1
            steps_run += 1
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", img_s=f"{seen / max(time.perf_counter() - started, 1e-9):.1f}")
            if max_steps is not None and steps_run >= max_steps:
                break
        seconds = time.perf_counter() - started
        record = {"epoch": epoch, "step": step, **{key: value / seen for key, value in sums.items()},
                  "images": seen, "images_per_s": seen / seconds, "seconds": seconds,
                  "kept_fraction": kept / max(total, 1), "lr": optimizer.param_groups[0]["lr"]}
        state = {"epoch": epoch, "step": step, "base": base, "config": asdict(cfg), "train_images": len(images),
                 "loss": record["loss"]}
        model.eval()
        save_finetune_checkpoint(output, model, optimizer, state)
        with metrics_file.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if progress:
            print(f"epoch {epoch}: loss {record['loss']:.4f}  kept {100 * record['kept_fraction']:.1f}% of patches  "
                  f"{record['images_per_s']:.1f} img/s", flush=True)
        if max_steps is not None and steps_run >= max_steps:
            break
    return model.eval()


def finetune_coco(detector: str, cfg: FinetuneConfig, output: str | Path, *, coco_root: str | None = None,
                  split: str = "train2017", ann: str | None = None, images: str | None = None,
                  limit: int | None = None, bavit: str | os.PathLike | None = None, resume: bool = False,
                  progress: bool = True) -> Path:
    """:func:`finetune` of the YOLOS ``detector`` (hub id or directory; not loaded with ``resume``) on a COCO split
    (``coco_root`` and ``split``, or ``ann`` and ``images``; the first ``limit`` images by id), with keep masks from
    the BAViT checkpoint ``bavit`` when ``cfg.mask_source`` is ``"bavit"``. Returns the checkpoint folder
    (:func:`checkpoint_dir`), loadable with ``--detector``.

    Raises:
        ConfigError: a detector that is not YOLOS. CheckpointError, DataError: see :func:`finetune`.
    """
    from ..core.checkpoint import load_checkpoint
    from ..pruning.detector import load_yolos_model

    model = None
    if not resume:
        try:
            model = load_yolos_model(detector)
        except ValueError as exc:  # a checkpoint that is not YOLOS
            raise ConfigError(str(exc)) from None
    ann_file, images_dir = resolve_paths(coco_root, split, ann, images)
    samples = CocoDetection(ann_file, images_dir, limit=limit)
    bavit_model = load_checkpoint(bavit) if bavit else None
    finetune(model, samples, cfg, output, bavit=bavit_model, resume=resume, progress=progress, base=str(detector))
    return checkpoint_dir(output)
