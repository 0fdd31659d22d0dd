"""Store in a BAViT checkpoint the one threshold per target mean sparsity (Table 2); the command line is
``python -m bavit calibrate`` (:mod:`bavit.cli.calibrate`).

Runs the checkpoint on calibration images (by default the held-out part of train2017: ``--subset holdout``),
finds for each mean sparsity from 0 to 95% in 1% steps and each CCA setting the threshold that gives it
(:func:`bavit.pruning.calibration.calibrate`) and writes the result into the checkpoint's safetensors metadata.
Images the checkpoint records as trained on are refused: thresholds from them give less sparsity on new images.
With ``--fold-models`` the probabilities are cross-fitted instead: each image is scored by a model that did not
train on it (K models, each trained without one fold: ``train --folds K --fold i --subset fit``), so a checkpoint
trained on all images can be calibrated on all of them, with a much smaller standard error than a small holdout.
BAViT runs in torch float32 by default, or as the app serves it (``--backend onnxruntime``: the ONNX graph with
int8 MatMuls); the calibration records which (:attr:`bavit.pruning.calibration.Calibration.backend`).
"""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import torch

from ..core.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from ..data.records import Record
from ..deploy.runtime import bavit_graph_name
from ..errors import DataError
from ..pruning.calibration import LEVELS, Calibration, calibrate
from ..pruning.detector import yolos_grid
from ..pruning.detector import yolos_tiny_config
from .evaluate import predict_probs


def check_unseen(checkpoint: Checkpoint, records: list[Record], allow: bool = False) -> None:
    """Refuse (:class:`DataError`) calibration images the checkpoint records as trained on, unless ``allow``;
    warn when it records nothing."""
    trained = checkpoint.extra.get("train_image_ids")
    if trained is None:
        print("warning: the checkpoint does not record its training images; cannot check that the calibration "
              "images are new to it", file=sys.stderr)
        return
    seen = {str(i) for i in trained} & {str(r.image_id) for r in records}
    if seen and not allow:
        raise DataError(f"{len(seen)} of the {len(records)} calibration images were used to train this checkpoint; "
                        "calibrate on images it did not see (e.g. --subset holdout of a model trained with "
                        "--subset fit, or --fold-models)")


def out_of_fold_probs(paths: list[str], records: list[Record], grid: int, batch_size: int = 16,
                      backend: str = "torch") -> np.ndarray:
    """``[N, G, G]`` FG probabilities of ``records``, each from the first model in ``paths`` that did not train on
    it (cross-fitting: every image is new to the model that scores it), run on ``backend`` (``"torch"``, or
    ``"onnxruntime"`` with int8 MatMuls as the app runs BAViT: :func:`~bavit.engine.evaluate.predict_probs`).

    Raises:
        DataError: a model that does not record its training images or predicts another grid, or an image that
            every model trained on.
    """
    folds = [read_checkpoint(path) for path in paths]
    trained = []
    for fold in folds:
        ids = fold.extra.get("train_image_ids")
        if not ids:
            raise DataError(f"fold model {fold.path} does not record its training images")
        trained.append({str(i) for i in ids})
    owner = []
    for record in records:
        free = [index for index, ids in enumerate(trained) if str(record.image_id) not in ids]
        if not free:
            raise DataError(f"every fold model trained on image {record.image_id}: no out-of-fold probability")
        owner.append(free[0])
    probs = np.zeros((len(records), grid, grid), dtype=np.float32)
    for index, fold in enumerate(folds):
        mine = [k for k, o in enumerate(owner) if o == index]
        if not mine:
            continue
        side = fold.config.grid_size
        if side != grid:
            raise DataError(f"fold model {fold.path} predicts a {side}x{side} grid, not {grid}x{grid}")
        probs[mine] = predict_probs(fold.model, [records[k] for k in mine], batch_size, backend=backend)[0]
    return probs


def calibration_probs(checkpoint: Checkpoint, records: list[Record], batch_size: int = 16,
                      fold_models: Sequence[str] = (), allow_trained_images: bool = False,
                      backend: str = "torch") -> np.ndarray:
    """The ``[N, G, G]`` FG probabilities a calibration of ``checkpoint`` on ``records`` is computed from: the
    model's own (refused on images it trained on, :func:`check_unseen`, unless ``allow_trained_images``) or, with
    ``fold_models``, out of fold (:func:`out_of_fold_probs`); BAViT run on ``backend``.

    Raises:
        DataError: no images, or images the model (or every fold model) trained on.
    """
    if not records:
        raise DataError("no calibration images")
    if fold_models:
        return out_of_fold_probs(list(fold_models), records, checkpoint.config.grid_size, batch_size, backend)
    check_unseen(checkpoint, records, allow_trained_images)
    return predict_probs(checkpoint.model, records, batch_size, backend=backend)[0]


def calibrate_checkpoint(checkpoint: Checkpoint, records: list[Record], source: str, batch_size: int = 16,
                         fold_models: Sequence[str] = (), allow_trained_images: bool = False,
                         backend: str = "torch") -> tuple[Calibration, torch.Tensor]:
    """Calibrate the model of ``checkpoint`` (:func:`bavit.core.checkpoint.read_checkpoint`) on ``records`` and
    store the result in its file (rewritten with the same weights, config and ``extra``).

    The probabilities are :func:`calibration_probs`' (the model's own, or out of fold with ``fold_models``; BAViT
    on ``backend``: ``"torch"`` float32, or ``"onnxruntime"`` with int8 MatMuls as the app serves it). ``source``
    says where the images come from; it and the backend are stored in the calibration. Returns the calibration
    and the probabilities ``[N, G, G]`` it was computed from.

    Raises:
        DataError: no images, or images the model (or every fold model) trained on.
    """
    probs = calibration_probs(checkpoint, records, batch_size, fold_models, allow_trained_images, backend)
    calibration = calibrate(probs, LEVELS, grid=yolos_grid(yolos_tiny_config().patch_size), source=source,
                            backend=bavit_graph_name(backend))
    save_checkpoint(checkpoint.model, checkpoint.path, checkpoint.extra, calibration.to_dict())
    return calibration, torch.from_numpy(probs)
