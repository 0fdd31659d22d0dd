"""The parts :func:`bavit.engine.train.train` puts together: its settings (:class:`TrainConfig`) and optimizer
groups, the architecture (:func:`model_config_for`), its initialisation (``--init``), the distillation teachers (``--teacher``) and the block masks of masked image
modelling (``--objective mim``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from ..core.checkpoint import Checkpoint, read_checkpoint
from ..core.labels import BOX_TAU
from ..core.config import LITE0_STEMS, PRESETS, BAViTConfig, stem_normalisation
from ..core.model import BAViT, build_bavit, grow_from
from ..core import lite0
from ..core.pretrained import copy_from_timm, copy_from_yolos
from ..errors import ConfigError
from ..pruning.detector import load_yolos_model


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
    cache_size: int = 512
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


__all__ = ["TrainConfig", "check_objective", "parameter_groups", "model_config_for", "init_bavit", "load_teachers", "teacher_prob", "block_mask", "hide_patches", "MIM_BLOCK"]
