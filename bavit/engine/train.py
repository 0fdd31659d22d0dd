"""BAViT training with the accumulative cross-entropy, Adam and StepLR (paper §3.4); the command line is
``python -m bavit train`` (:mod:`bavit.cli.train`).

Besides the paper's recipe, for the ablation of levers that might do better from the same images: a patch ranking
loss (``--rank-weight``), distillation from trained BAViTs (``--teacher``: their mean FG probability on each
augmented view, :class:`~bavit.core.loss.DistillationLoss`), and self-supervised pre-training by masked image
modelling (``--objective mim``, SimMIM: hidden 32x32 blocks, a linear pixel decoder,
:class:`~bavit.core.loss.MaskedPixelLoss`), whose checkpoint a label run starts from with ``--init bavit:PATH``.

In order below: the settings (:class:`TrainConfig`), the parts :func:`train` puts together (optimizer groups, the
architecture :func:`model_config_for`, the ``--init`` initialisation, the ``--teacher`` distillation teachers, the
block masks of masked image modelling), the run around it (processes, the epoch shuffle, resuming), and
:func:`train` itself.

Runs on one process, or under ``torchrun --nproc_per_node=N`` (DDP with the gloo backend on CPU). Every epoch
writes, each atomically, ``OUT/last.train-state.safetensors`` (:mod:`bavit.engine.state`: the weights, config,
optimizer moments, scheduler, epoch, torch RNG -- all a resume needs, in one file) and then ``OUT/last.safetensors``
(model + config, loadable by path). So a kill loses at most the current epoch: ``--resume`` reads the state file
alone (:func:`resume_state`) and rewrites ``last.safetensors`` from it. A resumed run continues exactly: the shuffle
order and the augmentation depend only on (seed, epoch), so it sees the same batches, and ends with the same weights,
as an uninterrupted one. Metrics go to ``OUT/metrics.jsonl``, one line per epoch (``--resume`` drops those of epochs
it redoes).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..core import lite0
from ..core.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from ..core.config import LITE0_STEMS, PRESETS, BAViTConfig, stem_normalisation
from ..core.labels import BOX_TAU, IGNORE_INDEX
from ..core.loss import AccumulativeCrossEntropy, DistillationLoss, MaskedPixelLoss, PatchRankingLoss
from ..core.model import BAViT, build_bavit, grow_from
from ..core.pretrained import copy_from_timm, copy_from_yolos
from ..data.augment import AugmentConfig, AugmentedDataset, CachedSamples
from ..data.records import Record
from ..errors import CheckpointError, ConfigError, DataError
from ..files import atomic_path, remove_stale_temps, write_text
from ..pruning.detector import load_yolos_model
from .state import TrainingState, read_training_state, save_training_state


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    step_size: int = 15  # StepLR: multiply the LR by gamma every step_size epochs
    gamma: float = 0.3
    class_weights: tuple[float, float] | None = None
    rank_weight: float = 0.0  # weight of PatchRankingLoss next to the paper's CE (0: the paper's recipe)
    teachers: tuple[str, ...] = ()  # BAViT checkpoints whose mean FG probability the student also learns
    objective: str = "labels"  # "labels": the token labels (the paper); "mim": masked image modelling, no labels
    mask_ratio: float = 0.6  # mim: share of the 32x32-pixel blocks (2x2 tokens) hidden from the model
    distill_weight: float = 0.5  # with teachers: loss = (1 - w) * CE(labels) + w * CE(teacher probabilities)
    augment: bool = True
    label_source: str = "mask"
    box_rule: str = "coverage"
    box_tau: float = BOX_TAU
    cache_size: int = 512  # side of the square uint8 images crops are cut from (bavit.data.augment)
    seed: int = 0
    workers: int = 0
    init: str = "random"
    freeze_trunk: int | None = None  # lite0 stems: freeze its stem and first N stages (None: train all)
    trunk_lr_scale: float = 1.0  # lite0 stems: the trunk's learning rate is lr times this
    data: str = ""  # which images, for the reader (the ids are in train_image_ids), e.g. "ade20k: 291 scenes, ..."


def check_objective(cfg: TrainConfig, world: int) -> bool:
    """Whether ``cfg`` trains by masked image modelling, after checking that its objective and losses go together.

    Raises:
        ConfigError: an unknown objective, a distillation weight outside [0, 1], or mim with teachers, a ranking
            loss or several processes.
    """
    if cfg.teachers and not 0.0 <= cfg.distill_weight <= 1.0:
        raise ConfigError(f"--distill-weight is a fraction in [0, 1], got {cfg.distill_weight}")
    if cfg.objective not in ("labels", "mim"):
        raise ConfigError(f"objective must be 'labels' or 'mim', got {cfg.objective!r}")
    mim = cfg.objective == "mim"
    if mim and (cfg.teachers or cfg.rank_weight or world > 1 or not 0.0 < cfg.mask_ratio < 1.0):
        raise ConfigError("--objective mim takes no teachers or ranking loss, runs in one process, and needs a "
                          f"mask ratio in (0, 1) (got {cfg.mask_ratio})")
    return mim


def parameter_groups(model: BAViT, decoder: torch.nn.Module | None, cfg: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups: everything (and the mim decoder); with a pretrained trunk (the lite0 stems)
    its stem and first ``cfg.freeze_trunk`` stages frozen and the trunk at ``cfg.lr * cfg.trunk_lr_scale``.

    Raises:
        ConfigError: trunk settings for a model without a pretrained trunk.
    """
    groups = [{"params": list(model.parameters()) + (list(decoder.parameters()) if decoder is not None else [])}]
    if model.config.stem in LITE0_STEMS:  # a pretrained trunk: frozen in part or whole, or at its own learning rate
        model.vit.patch_embed.freeze(cfg.freeze_trunk)
        trunk = {id(p) for p in model.vit.patch_embed.trunk.parameters()}
        groups = [{"params": [p for p in groups[0]["params"] if id(p) not in trunk]},
                  {"params": list(model.vit.patch_embed.trunk.parameters()), "lr": cfg.lr * cfg.trunk_lr_scale}]
    elif cfg.freeze_trunk is not None or cfg.trunk_lr_scale != 1.0:
        raise ConfigError("--freeze-trunk and --trunk-lr-scale apply to the pretrained stems (--stem lite0 or lite0-4) only")
    return groups


def model_config_for(model: str = "small", depth: int | None = None, stem: str = "patch", img_size: int = 384,
                     drop_path: float = 0.0, embed_dim: int | None = None, num_heads: int | None = None) -> BAViTConfig:
    """The architecture ``train`` builds: the ``model`` preset (:data:`~bavit.core.config.PRESETS`) with its depth,
    width and heads overridden by ``depth``, ``embed_dim`` and ``num_heads`` when given, the token embedding ``stem``
    with that stem's normalisation, ``img_size`` and the stochastic depth rate ``drop_path``."""
    preset = PRESETS[model]
    mean, std = stem_normalisation(stem)
    return BAViTConfig(**{**asdict(preset), "depth": depth or preset.depth, "stem": stem, "img_size": img_size,
                          "embed_dim": embed_dim or preset.embed_dim, "num_heads": num_heads or preset.num_heads,
                          "drop_path_rate": drop_path, "mean": mean, "std": std})


def init_bavit(config: BAViTConfig, init: str = "random") -> BAViT:
    """A new BAViT for training, initialised as ``--init`` names it.

    Args:
        config: architecture.
        init: ``"random"`` (timm's init; the offline default); ``"timm:NAME"`` to copy the patch embedding,
            position embedding, first ``depth`` blocks and final norm of a pretrained timm ViT of the same width
            (e.g. ``timm:vit_tiny_patch16_384``, needs the hub); ``"yolos:ID_OR_DIR"`` to copy the first ``depth``
            encoder layers of a YOLOS checkpoint (e.g. ``yolos:hustvl/yolos-tiny``); ``"bavit:PATH"`` to grow a
            shallower trained BAViT: its embedding, blocks, norm and head are copied and the extra blocks start as
            identities (zeroed residual outputs), so the deeper model starts from the shallower one's predictions;
            ``"lite0:package"`` / ``"lite0:hub"`` (the lite0 stems only) to copy ImageNet-trained EfficientNet-Lite0
            weights into the stem's trunk, from the pip package's file or timm's hub name
            (:mod:`bavit.core.lite0`). The model's ``init_provenance`` then names the weights (source, version,
            file, sha256), and train stores it in the checkpoint; after ``"bavit:PATH"`` its
            ``inherited_image_ids`` are the images that checkpoint trained on.
    Raises:
        ConfigError: an unknown init, or one that does not fit the architecture.
        WeightsUnavailableError: pretrained weights that cannot be had here.
    """
    model = build_bavit(config)
    kind, _, source = init.partition(":")
    if init == "random":
        return model
    if not source or kind not in ("timm", "yolos", "bavit", "lite0"):
        raise ConfigError(f"init must be 'random', 'timm:NAME', 'yolos:ID_OR_DIR', 'bavit:PATH', 'lite0:package' or "
                          f"'lite0:hub', got {init!r}")
    if kind == "lite0":
        if config.stem not in LITE0_STEMS or source not in ("package", "hub"):
            raise ConfigError(f"init {init!r} needs --stem lite0 (or lite0-4) and is lite0:package or lite0:hub")
        state, provenance = lite0.package_weights() if source == "package" else lite0.hub_weights()
        lite0.copy_lite0(model.vit.patch_embed, state)
        model.init_provenance = provenance
    elif kind == "bavit":
        grown = read_checkpoint(source)
        grow_from(model, grown.model)
        model.inherited_image_ids = grown.extra.get("train_image_ids", [])
        if grown.extra.get("init_weights"):  # a pretrained trunk comes along with the source's weights
            model.init_provenance = grown.extra["init_weights"]
    elif kind == "timm":
        copy_from_timm(model, source)
    else:
        copy_from_yolos(model, load_yolos_model(source), source)
    return model


def load_teachers(paths: Sequence[str], config: BAViTConfig) -> list[Checkpoint]:
    """The distillation teachers' checkpoints (models in eval mode); each must read the student's input and predict
    its grid.

    Raises:
        CheckpointError: a teacher that cannot be loaded.
        ConfigError: a teacher with another input size or patch grid than ``config``.
    """
    teachers = []
    for path in paths:
        teacher = read_checkpoint(path)
        if (teacher.config.img_size, teacher.config.grid_size) != (config.img_size, config.grid_size):
            raise ConfigError(f"teacher {path} reads {teacher.config.img_size} px into a {teacher.config.grid_size}x"
                              f"{teacher.config.grid_size} grid; the student reads {config.img_size} px into "
                              f"{config.grid_size}x{config.grid_size}")
        teachers.append(teacher)  # its model is used under no_grad only (teacher_prob)
    return teachers


@torch.no_grad()
def teacher_prob(teachers: Sequence[BAViT], pixels: torch.Tensor) -> torch.Tensor:
    """``[B, G, G]``: the teachers' mean FG probability on the student's (augmented) input."""
    return torch.stack([teacher.fg_prob(pixels) for teacher in teachers]).mean(0)


MIM_BLOCK = 2  # tokens per side of a masked block (SimMIM masks 32x32 pixels)


def block_mask(batch: int, grid: int, ratio: float, rng: np.random.Generator, block: int = MIM_BLOCK) -> torch.Tensor:
    """``bool [batch, grid, grid]``: per image, ``round(ratio * blocks)`` random ``block x block`` token blocks
    masked (SimMIM's random masking; ``grid`` a multiple of ``block``)."""
    side = grid // block
    count = round(ratio * side * side)
    masks = np.zeros((batch, side * side), dtype=bool)
    for row in masks:
        row[rng.permutation(side * side)[:count]] = True
    small = torch.from_numpy(masks).reshape(batch, side, side)
    return small.repeat_interleave(block, 1).repeat_interleave(block, 2)


def hide_patches(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``pixels`` with the masked tokens' pixels set to 0 (the dataset mean after normalisation)."""
    patch = pixels.shape[-1] // mask.shape[-1]
    keep = ~mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return pixels * keep[:, None].to(pixels.dtype)


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises gloo when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def state_file(out_dir: Path) -> Path:
    return out_dir / "last.train-state.safetensors"


def resume_state(state_path: Path) -> TrainingState:
    """The state saved with the last complete epoch; its progress holds ``epoch``, ``model`` (its state dict),
    ``config`` (JSON), ``checkpoint`` (``last.safetensors``' extra metadata), ``rng`` and, for mim, ``decoder``."""
    if not state_path.is_file():
        raise CheckpointError(f"--resume: no training state at {state_path}")
    state = read_training_state(state_path)
    if "model" not in state.progress:
        raise CheckpointError(f"--resume: {state_path} holds no model weights (written by an older bavit); "
                              "start afresh")
    return state


def rewind_metrics(path: Path, epoch: int) -> None:
    """Keep ``metrics.jsonl``'s lines of the epochs up to ``epoch`` (the resumed one): a line is written before its
    epoch's state, so a run killed in between (or midway through the line) left one that the resumed run redoes."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epoch:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass  # the half-written last line of a killed run
    write_text(path, "".join(kept))


def epoch_sampler(dataset: torch.utils.data.Dataset, world: int, rank: int,
                   seed: int) -> torch.utils.data.DistributedSampler:
    """The shuffle: a permutation that depends only on (seed, epoch) -- ``set_epoch`` picks it -- so a resumed run
    sees the same batches as an uninterrupted one. One process is the one-replica case of DDP's sampler."""
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)


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
