"""Deterministic splits of a set of records (by a hash of each image id, so they depend on the ids and the seed
alone, not on the order the records come in): a held-out fraction, and k folds for out-of-fold calibration."""
from __future__ import annotations

import hashlib
from typing import Sequence

from ..errors import DataError
from .records import Record


def _ranked(records: Sequence[Record], seed: int) -> list[int]:
    """Record indices ordered by ``blake2b(f"{seed}:{image_id}")``: an order that depends on the ids alone."""
    return sorted(range(len(records)),
                  key=lambda i: hashlib.blake2b(f"{seed}:{records[i].image_id}".encode(), digest_size=8).digest())


def fold_split(records: Sequence[Record], folds: int, fold: int, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """``(train, held)``: fold ``fold`` of a deterministic ``folds``-way split held out, the rest to train on.

    The image at rank ``r`` of :func:`holdout_split`'s hash order is in fold ``r % folds``, so the folds partition
    the set, their sizes differ by at most one, and they depend only on the image ids and the seed.
    """
    if folds < 2 or not 0 <= fold < folds:
        raise DataError(f"--fold must be in 0..{folds - 1} of --folds >= 2, got fold {fold} of {folds}")
    held = {index for rank, index in enumerate(_ranked(records, seed)) if rank % folds == fold}
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def holdout_split(records: Sequence[Record], fraction: float = 0.15, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """``(fit, holdout)``: a deterministic split of a set into images to train on and images held out (for
    calibration and for choosing hyperparameters).

    An image is held out when its rank by ``blake2b(f"{seed}:{image_id}")`` is among the first
    ``round(fraction * N)``: the split depends only on the image ids, the fraction and the seed, not on the order
    the records come in. Both parts keep the records' order.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the held-out fraction must be in (0, 1), got {fraction}")
    held = set(_ranked(records, seed)[: round(fraction * len(records))])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


__all__ = ["fold_split", "holdout_split"]
