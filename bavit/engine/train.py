"""BAViT training with the accumulative cross-entropy, Adam and StepLR (paper §3.4); the command line is
``python -m bavit train`` (:mod:`bavit.cli.train`).

Besides the paper's recipe, for the ablation of levers that might do better from the same images: a patch ranking
loss (``--rank-weight``), distillation from trained BAViTs (``--teacher``: their mean FG probability on each
augmented view, :class:`~bavit.core.loss.DistillationLoss`), and self-supervised pre-training by masked image
modelling (``--objective mim``, SimMIM: hidden 32x32 blocks, a linear pixel decoder,
:class:`~bavit.core.loss.MaskedPixelLoss`), whose checkpoint a label run starts from with ``--init bavit:PATH``.

Runs on one process, or under ``torchrun --nproc_per_node=N`` (DDP with the gloo backend on CPU). Every epoch
writes, each atomically, ``OUT/last.train-state.safetensors`` (:mod:`bavit.engine.state`: the weights, config,
optimizer moments, scheduler, epoch, torch RNG -- all a resume needs, in one file) and then ``OUT/last.safetensors``
(model + config, loadable by path). So a kill loses at most the current epoch: ``--resume`` reads the state file
alone (:mod:`bavit.engine.train_run`) and rewrites ``last.safetensors`` from it. A resumed run continues exactly: the shuffle order and the augmentation
depend only on (seed, epoch), so it sees the same batches, and ends with the same weights, as an uninterrupted
one. Metrics go to ``OUT/metrics.jsonl``, one line per epoch (``--resume`` drops those of epochs it redoes).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..core.checkpoint import save_checkpoint
from ..core.config import BAViTConfig
from ..core.labels import IGNORE_INDEX
from ..core.loss import AccumulativeCrossEntropy, DistillationLoss, MaskedPixelLoss, PatchRankingLoss
from ..core.model import BAViT
from ..data.augment import AugmentConfig, AugmentedDataset, CachedSamples
from ..data.records import Record
from ..errors import DataError
from ..files import atomic_path, remove_stale_temps
from .state import save_training_state
from .train_parts import (TrainConfig, block_mask, check_objective, hide_patches, init_bavit, load_teachers,
                          parameter_groups, teacher_prob)
from .train_run import distributed, epoch_sampler, resume_state, rewind_metrics, state_file


def train(records: list[Record], model_config: BAViTConfig, cfg: TrainConfig, out_dir: str | Path,
          resume: bool = False, progress: bool = True, max_steps: int | None = None) -> BAViT:
    """Train a BAViT on ``records``; returns the (unwrapped) model after the last epoch.

    Args:
        records: training images with masks/boxes.
        model_config: architecture (stored in every checkpoint).
        cfg: optimisation settings.
        out_dir: folder for ``last.safetensors``, its train state and ``metrics.jsonl``.
        resume: continue after the epoch saved in ``out_dir``'s training state.
        max_steps: stop after this many optimizer steps in total (tests).
    """
    from tqdm import tqdm

    rank, world = distributed()
    out_dir = Path(out_dir)
    last, state_path, metrics_file = out_dir / "last.safetensors", state_file(out_dir), out_dir / "metrics.jsonl"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(last, state_path, metrics_file)  # a killed run's half-written files
    torch.manual_seed(cfg.seed)
    if not records:
        raise DataError("no training images")
    cache = CachedSamples(records, model_config, cfg.cache_size, cfg.label_source, cfg.box_rule, cfg.box_tau,
                          progress=progress and rank == 0)
    dataset = AugmentedDataset(cache, AugmentConfig() if cfg.augment else None, seed=cfg.seed)
    sampler = epoch_sampler(dataset, world, rank, cfg.seed)
    # The loader's own generator only seeds worker processes (the dataset draws from its own (seed, epoch, index)
    # RNG); giving it one keeps the loader from consuming the global torch RNG.
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.workers, drop_last=len(dataset) > cfg.batch_size * world,
                                         generator=torch.Generator().manual_seed(cfg.seed),
                                         persistent_workers=cfg.workers > 0)
    resumed = resume_state(state_path) if resume else None
    saved = resumed.progress if resumed is not None else None
    if saved is not None:
        model = BAViT(BAViTConfig.from_json(saved["config"]))  # the stored config wins over the command line's
        model.load_state_dict(saved["model"])
        init_weights = saved["checkpoint"].get("init_weights")
        inherited = saved["checkpoint"].get("train_image_ids", [])  # these records' ids and those it inherited
    else:
        model = init_bavit(model_config, cfg.init)
        init_weights = getattr(model, "init_provenance", None)
        inherited = getattr(model, "inherited_image_ids", [])
    model.train()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    criterion = AccumulativeCrossEntropy(cfg.class_weights)
    ranking = PatchRankingLoss()
    distillation = DistillationLoss()
    mim = check_objective(cfg, world)
    teacher_checkpoints = load_teachers(cfg.teachers, model.config)
    teachers = [teacher.model for teacher in teacher_checkpoints]
    # mim: a linear decoder from each token's features to its 16x16 pixels (SimMIM's one-layer head)
    patch = model.config.patch_size
    decoder = torch.nn.Linear(model.config.embed_dim, 3 * patch * patch) if mim else None
    masked_pixels = MaskedPixelLoss(patch)
    optimizer = torch.optim.Adam(parameter_groups(model, decoder, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    start_epoch = 0
    if saved is not None:
        resumed.restore(optimizer, scheduler)
        start_epoch = int(saved["epoch"])
        torch.set_rng_state(saved["rng"])  # drop path draws from it
        if mim:
            decoder.load_state_dict(saved["decoder"])
        if rank == 0:
            # the state alone resumes: last.safetensors is rewritten from it (a kill between the two writes of an
            # epoch left one that lags behind; otherwise the same bytes)
            save_checkpoint(model, last, extra=saved["checkpoint"])
            rewind_metrics(metrics_file, start_epoch)
            print(f"resuming after epoch {start_epoch} ({state_path})", flush=True)
    prior = cache.fg_prior().flatten().tolist()
    # calibrate refuses images a model trained on; what its teachers or its init trained on reaches it through them
    image_ids = list(dict.fromkeys([record.image_id for record in records]
                                   + [i for t in teacher_checkpoints for i in t.extra.get("train_image_ids", [])]
                                   + inherited))
    steps = 0
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        loss_sum, token_correct, token_count, images = 0.0, 0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress or rank != 0, leave=False)
        for batch_index, (pixels, labels, fractions) in enumerate(bar):
            if mim:  # the masks depend only on (seed, epoch, batch), so a resumed run hides the same blocks
                mask = block_mask(len(pixels), model.config.grid_size, cfg.mask_ratio,
                                  np.random.default_rng((cfg.seed, epoch, batch_index)))
                loss = masked_pixels(decoder(model.forward_features(hide_patches(pixels, mask))), pixels, mask)
            else:
                logits = net(pixels)
                loss = criterion(logits, labels)
                if teachers:
                    soft = distillation(logits, teacher_prob(teachers, pixels), labels)
                    loss = (1.0 - cfg.distill_weight) * loss + cfg.distill_weight * soft
                if cfg.rank_weight:
                    loss = loss + cfg.rank_weight * ranking(logits, fractions)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not mim:
                valid = labels.reshape(-1) != IGNORE_INDEX
                predicted = logits.reshape(-1, 2).argmax(-1)
                token_correct += int((predicted[valid] == labels.reshape(-1)[valid]).sum())
                token_count += int(valid.sum())
            loss_sum += float(loss.detach()) * len(pixels)
            images += len(pixels)
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{loss_sum / images:.4f}", img_s=f"{images * world / max(elapsed, 1e-9):.1f}")
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        scheduler.step()
        elapsed = time.perf_counter() - started
        totals = torch.tensor([loss_sum, images, token_correct, token_count], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)
        record = {
            "epoch": epoch,
            "loss": totals[0].item() / max(totals[1].item(), 1),
            "train_token_accuracy": totals[2].item() / totals[3].item() if totals[3].item() else None,
            "images": int(totals[1].item()),
            "images_per_s": totals[1].item() / elapsed,
            "seconds": elapsed,
            "lr": optimizer.param_groups[0]["lr"],
            "world_size": world,
        }
        if rank == 0:
            with metrics_file.open("a") as handle:  # before the state: --resume drops the lines of epochs it redoes
                handle.write(json.dumps(record) + "\n")
            extra = {"epoch": epoch, "train": asdict(cfg), "fg_prior": prior, "train_images": len(records),
                     "train_image_ids": image_ids, "loss": record["loss"]}
            if init_weights:
                extra["init_weights"] = init_weights  # which pretrained file the run started from
            # The state first: it alone resumes (it holds the weights too), so a kill anywhere in here loses at most
            # this epoch, and --resume rewrites last.safetensors from the state.
            save_training_state(state_path, optimizer, scheduler, epoch=epoch, rng=torch.get_rng_state(),
                                model=model.state_dict(), config=model.config.to_json(), checkpoint=extra,
                                **({"decoder": decoder.state_dict()} if mim else {}))
            save_checkpoint(model, last, extra=extra)
            # one line per epoch (the log of a background run)
            accuracy = record["train_token_accuracy"]
            print(f"epoch {epoch}: loss {record['loss']:.4f}  "
                  f"{'' if accuracy is None else f'train acc {accuracy:.4f}  '}"
                  f"{record['images_per_s']:.1f} img/s  lr {record['lr']:.2e}", flush=True)
        if world > 1:
            dist.barrier()
        if max_steps is not None and steps >= max_steps:
            break
    model.eval()
    return model


def train_and_copy(records: list[Record], model_config: BAViTConfig, cfg: TrainConfig, out_dir: str | Path,
                   output: str | os.PathLike | None = None, resume: bool = False, progress: bool = True) -> Path | None:
    """:func:`train`, then copy the final ``OUT/last.safetensors`` to ``output`` (atomically; rank 0 only) and end
    the DDP process group when there is one. Returns ``output`` when this process wrote it, else None."""
    train(records, model_config, cfg, out_dir, resume=resume, progress=progress)
    rank = dist.get_rank() if dist.is_initialized() else 0
    written = None
    if rank == 0 and output:
        with atomic_path(output) as tmp:
            shutil.copyfile(Path(out_dir) / "last.safetensors", tmp)
        written = Path(output)
    if dist.is_initialized():
        dist.destroy_process_group()
    return written
