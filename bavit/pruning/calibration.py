"""Calibrated sparsity (paper Table 2): one FG-probability threshold for every image, per target *mean* sparsity.

Table 2 of the paper sets sparsity with one confidence threshold for the whole set: each image keeps what its
content asks for, and the table's sparsity is the mean over images. :func:`calibrate` finds, for each target mean
sparsity (0-95% in 1% steps) and each number of CCA steps, the threshold that gives that mean on a set of
calibration images, through the pipeline's own keep-mask rule (:func:`bavit.pruning.keep_mask.keep_mask_from_probs`
on the YOLOS grid). The result is stored in the BAViT checkpoint (:mod:`bavit.core.checkpoint`, key
``calibration``), so reading a checkpoint brings its calibration along (:meth:`Calibration.from_checkpoint`).

Calibrate on images the model did not train on: a model is more confident on its training images, so thresholds
taken from them give less sparsity on new images than asked (``python -m bavit calibrate`` refuses images the
checkpoint records as trained on). A calibration records which backend computed its probabilities
(:attr:`Calibration.backend`: torch float32, or onnxruntime with int8 MatMuls as the app serves BAViT); those
stored before it did were all computed in torch float32.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from ..core.checkpoint import Checkpoint
from ..errors import CheckpointError, ConfigError
from .keep_mask import closest_index, keep_mask_from_probs
from .settings import MAX_CCA_STEPS, MAX_SPARSITY, PruningSettings, cca_steps_value, sparsity_value

LEVELS = tuple(round(0.01 * i, 2) for i in range(round(100 * MAX_SPARSITY) + 1))  # target mean sparsity: 0%, 1%, ..., 95%
CCA_STEPS = tuple(range(MAX_CCA_STEPS + 1))  # every setting of the app's CCA slider
# The backend of a calibration stored without one: torch float32, as bavit.deploy.runtime.bavit_graph_name("torch")
# names it (a test holds the two equal; the detector side does not import the deployment side).
DEFAULT_CALIBRATION_BACKEND = "torch float32"


@dataclass(frozen=True)
class Calibration:
    """Thresholds that give each target mean sparsity on the calibration images.

    Attributes:
        levels: target mean sparsities (fractions of the ``grid x grid`` detector patches pruned), ascending.
        thresholds: ``{cca_steps: [threshold per level]}``; a patch is kept when its FG probability is >= it.
        achieved: ``{cca_steps: [mean sparsity per level]}`` that threshold gives on the calibration images.
        grid: detector patch grid side (32 for YOLOS at 512 px).
        resample: BAViT grid -> detector grid resampling of the keep-mask rule.
        images: how many calibration images.
        source: which images (for the reader), e.g. ``"train2017 holdout (15%, seed 0)"``.
        backend: what computed the probabilities (:func:`bavit.deploy.runtime.bavit_graph_name`): ``"torch
            float32"`` (also read for calibrations stored without it) or ``"onnxruntime int8 MatMuls"``.
    """

    levels: tuple[float, ...]
    thresholds: dict[int, tuple[float, ...]]
    achieved: dict[int, tuple[float, ...]]
    grid: int
    resample: str
    images: int
    source: str = ""
    backend: str = DEFAULT_CALIBRATION_BACKEND

    def threshold(self, sparsity: float, cca_steps: int) -> float:
        """The threshold for a target mean ``sparsity`` (fraction) with ``cca_steps`` CCA steps, interpolated
        linearly between the calibrated levels.

        Raises:
            ConfigError: a sparsity outside the calibrated range, or CCA steps that were not calibrated.
        """
        cca_steps = cca_steps_value(cca_steps)
        if cca_steps not in self.thresholds:
            raise ConfigError(f"no calibration for {cca_steps} CCA steps (calibrated: {sorted(self.thresholds)})")
        low, high = self.levels[0], self.levels[-1]
        sparsity = sparsity_value(sparsity)
        if not low <= sparsity <= high + 1e-9:
            raise ConfigError(f"sparsity must lie in this checkpoint's calibrated range [{low:g}, {high:g}] (a fraction: "
                              f"0.35 for 35%), got {sparsity:g}")
        return float(np.interp(sparsity, self.levels, self.thresholds[cca_steps]))

    def to_dict(self) -> dict:
        """JSON data: what a checkpoint stores (``save_checkpoint(..., calibration=c.to_dict())``)."""
        data = asdict(self)
        data["thresholds"] = {str(k): list(v) for k, v in self.thresholds.items()}
        data["achieved"] = {str(k): list(v) for k, v in self.achieved.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        """The calibration :meth:`to_dict` wrote.

        Raises:
            ValueError (:class:`~bavit.errors.ConfigError`), KeyError, TypeError: data that is not one: levels that
                are not ascending fractions, a threshold list per CCA setting that is not one finite number per
                level, a grid that is not a positive whole number, a source, resample or backend that is not a
                string. Data without a ``backend`` (stored before calibrations recorded it) reads as
                :data:`DEFAULT_CALIBRATION_BACKEND`.
        """
        levels = _numbers("levels", data["levels"])
        if not levels or list(levels) != sorted(levels) or not all(0.0 <= v < 1.0 for v in levels):
            raise ConfigError("levels must be ascending fractions in [0, 1)")
        tables = {}
        for name in ("thresholds", "achieved"):
            tables[name] = {cca_steps_value(int(k)): _numbers(f"{name}[{str(k)[:20]}]", v, len(levels))
                            for k, v in data[name].items()}
        if not tables["thresholds"]:
            raise ConfigError("thresholds has no CCA setting")
        grid, images = data["grid"], data["images"]
        for name, value in (("grid", grid), ("images", images)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 1_000_000_000:
                raise ConfigError(f"{name} must be a positive whole number")
        for name in ("resample", "source", "backend"):
            if not isinstance(data.get(name, ""), str):
                raise ConfigError(f"{name} must be a string")
        return cls(levels=levels, thresholds=tables["thresholds"], achieved=tables["achieved"], grid=grid,
                   resample=data["resample"], images=images, source=data.get("source", ""),
                   backend=data.get("backend", DEFAULT_CALIBRATION_BACKEND))

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> "Calibration | None":
        """The calibration stored with a checkpoint (:func:`bavit.core.checkpoint.read_checkpoint`), or None.

        Raises:
            CheckpointError: a stored calibration that is not one.
        """
        if checkpoint.calibration is None:
            return None
        try:
            return cls.from_dict(checkpoint.calibration)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise CheckpointError(f"{checkpoint.path}: stored calibration is invalid ({exc})") from None


def _numbers(name: str, values, length: int | None = None) -> tuple[float, ...]:
    """``values`` as a tuple of finite floats (a stored calibration's lists), of ``length`` items if given."""
    if (not isinstance(values, (list, tuple)) or (length is not None and len(values) != length)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ConfigError(f"{name} must be a list of numbers" + (f", one per level ({length})" if length else ""))
    try:
        floats = tuple(float(v) for v in values)
    except OverflowError:
        floats = (math.inf,)
    if not all(math.isfinite(v) for v in floats):
        raise ConfigError(f"{name} holds a number that is not finite (NaN or infinity)")
    return floats


def sparsity_at(fg_prob: torch.Tensor, threshold: float, cca_steps: int, grid: int,
                resample: str = "nearest") -> torch.Tensor:
    """``float [N]``: each image's sparsity (fraction of the ``grid x grid`` patches pruned) at ``threshold``.

    Args:
        fg_prob: ``[N, G, G]`` FG probabilities.
    """
    masks = keep_mask_from_probs(fg_prob, PruningSettings(threshold=threshold, cca_steps=cca_steps), grid=grid,
                                 resample=resample).keep_mask
    return 1.0 - masks.flatten(1).float().mean(1)


def sparsity_standard_error(fg_prob: torch.Tensor, threshold: float, cca_steps: int, grid: int,
                            resample: str = "nearest") -> float | None:
    """The standard error of the mean sparsity at ``threshold`` over these images (sample standard deviation of the
    per-image sparsity over ``sqrt(N)``); ``None`` for fewer than two images.

    A calibrated threshold is fitted to the mean over the calibration images, which is an estimate: on a new set of
    images, the mean at the same threshold is expected to differ by about this much (and more, by the new set's own
    standard error). Per-image sparsity varies widely (nearly 0 for a crowded image, most of the grid for an empty
    one), so a few dozen calibration images leave several points of uncertainty.
    """
    per_image = sparsity_at(fg_prob, threshold, cca_steps, grid, resample).double()
    if len(per_image) < 2:
        return None
    return float(per_image.std(unbiased=True) / len(per_image) ** 0.5)


def _threshold_for(fg_prob: torch.Tensor, candidates: torch.Tensor, target: float, cca_steps: int, grid: int,
                   resample: str) -> tuple[float, float]:
    """The threshold whose mean sparsity is closest to ``target``, and that mean.

    Mean sparsity never falls as the threshold rises (fewer cells pass; CCA and resampling are monotone), so
    :func:`closest_index` searches the sorted distinct probabilities. The threshold returned lies halfway between two neighbouring probabilities, so it
    keeps the same cells on the calibration images and does not sit on an exact probability.
    """
    def mean(index: int) -> float:
        return float(sparsity_at(fg_prob, float(values[index]), cca_steps, grid, resample).mean())

    values = torch.unique(torch.cat([candidates.new_zeros(1), candidates, candidates.new_ones(1)]))  # sorted
    low = closest_index(mean, 0, len(values) - 1, target, ties="low")  # a tie keeps more patches
    threshold = 0.0 if low == 0 else float((values[low - 1] + values[low]) / 2)
    return threshold, mean(low)


def calibrate(fg_prob: np.ndarray | torch.Tensor, levels: Sequence[float] = LEVELS,
              cca_steps: Sequence[int] = CCA_STEPS, grid: int = 32, resample: str = "nearest",
              source: str = "", backend: str = DEFAULT_CALIBRATION_BACKEND) -> Calibration:
    """Thresholds for each target mean sparsity on the calibration images' FG probabilities.

    Args:
        fg_prob: ``[N, G, G]`` BAViT FG probabilities of the calibration images.
        levels: target mean sparsities (fractions in [0, 1)), ascending.
        cca_steps: the CCA settings to calibrate.
        grid: detector patch grid side; resample: the keep-mask rule's resampling.
        source, backend: where the images come from and what computed ``fg_prob``, in words (stored with it).
    """
    probs = (fg_prob.detach().float().clone() if isinstance(fg_prob, torch.Tensor)
             else torch.tensor(np.asarray(fg_prob), dtype=torch.float32))
    if probs.dim() != 3 or len(probs) == 0:
        raise ConfigError(f"calibration needs FG probabilities [N, G, G] of at least one image, got {tuple(probs.shape)}")
    levels = tuple(float(v) for v in levels)
    if list(levels) != sorted(levels) or not all(0.0 <= v < 1.0 for v in levels):
        raise ConfigError("calibration levels must be ascending fractions in [0, 1)")
    candidates = torch.unique(probs)
    thresholds, achieved = {}, {}
    for steps in cca_steps:
        pairs = [_threshold_for(probs, candidates, level, int(steps), grid, resample) for level in levels]
        thresholds[int(steps)] = tuple(threshold for threshold, _ in pairs)
        achieved[int(steps)] = tuple(mean for _, mean in pairs)
    return Calibration(levels, thresholds, achieved, grid, resample, len(probs), source, backend)


__all__ = ["Calibration", "calibrate", "sparsity_at", "sparsity_standard_error", "LEVELS", "CCA_STEPS",
           "DEFAULT_CALIBRATION_BACKEND"]
