"""Patch labels (paper §3.1): FG/BG per token from instance masks or from boxes.

All functions return a ``[gh, gw]`` int64 grid with 1 = FG, 0 = BG and ``IGNORE_INDEX`` (-100) for tokens that
are mostly VOC "void". The grid is laid over the image *after* the square resize the model applies, so token
``(r, c)`` covers rows ``r*H/gh .. (r+1)*H/gh`` and columns ``c*W/gw .. (c+1)*W/gw`` of the original image.
"""
from __future__ import annotations

from typing import Iterable, Sequence, TypeVar

import numpy as np
import torch

IGNORE_INDEX = -100  # label of a token that counts as neither FG nor BG (mostly VOC void); F.cross_entropy's default
FG_FRAC = 0.10  # paper: a patch with more than 10% object pixels is FG
BOX_TAU = 0.5  # paper Eq. 1: with box-only labels a patch is FG when score(P, B) >= tau for some box B
VOID_VALUE = 255  # VOC's border / "difficult" pixels
FRACTION_TOL = 1e-9  # float64 sums of exact fractions: "exactly 10%" must not read as 10.0000000001%
VOID_IGNORE_FRAC = 0.5  # a token with more void than this is IGNORE_INDEX

Fractions = TypeVar("Fractions", np.ndarray, torch.Tensor)


def fg_from_fractions(fraction: Fractions, fg_frac: float = FG_FRAC) -> Fractions:
    """The paper's mask rule: a token is FG when *more than* ``fg_frac`` of its (non-void) pixels are object pixels.

    The one place where object fractions become FG. The comparison allows ``FRACTION_TOL``: a float64 sum of exact
    fractions (:func:`area_fractions`) reads exactly 10% as 10.0000000001% now and then, and that must stay BG. (On
    float32 torch fractions the threshold is rounded to float32, whose spacing near 0.1 is 7e-9: there 0.1 + 1e-9 is
    0.1 again and the rule is the plain ``>``.)

    Args:
        fraction: ``[gh, gw]`` (any shape) object fractions in [0, 1], numpy or torch.
        fg_frac: threshold (strictly greater than).
    Returns:
        bool array or tensor of ``fraction``'s shape and kind, True = FG.
    """
    return fraction > fg_frac + FRACTION_TOL


def fg_from_box_scores(score: Fractions, tau: float) -> Fractions:
    """The paper's box rule (Eq. 1): a token is FG when ``score(P, B) >= tau`` (coverage or IoU, see
    :func:`labels_from_boxes`), with the same float tolerance as :func:`fg_from_fractions`.

    Args:
        score: ``[gh, gw]`` (any shape) scores in [0, 1], numpy or torch.
    Returns:
        bool array or tensor of ``score``'s shape and kind, True = FG.
    """
    return score >= tau - FRACTION_TOL


def _overlap_weights(n_out: int, n_in: int) -> np.ndarray:
    """``[n_out, n_in]``: the share of output cell ``i`` covered by input pixel ``j`` (rows sum to 1)."""
    edges = np.arange(n_out + 1, dtype=np.float64) * n_in / n_out
    pixel = np.arange(n_in, dtype=np.float64)[None]
    overlap = np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel)
    return np.clip(overlap, 0.0, None) * (n_out / n_in)


def area_fractions(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Exact area-weighted fraction of each grid cell covered by ``mask``.

    Cell ``(r, c)`` spans rows ``[r*H/gh, (r+1)*H/gh)`` and columns ``[c*W/gw, (c+1)*W/gw)`` in continuous pixel
    coordinates; pixels straddling a cell edge count with the part of their area inside the cell.

    Args:
        mask: ``[H, W]`` bool or float array in [0, 1], at any resolution.
        grid: ``(gh, gw)`` cells over the whole image.
    Returns:
        ``[gh, gw]`` float64 array of fractions in [0, 1].
    """
    mask = np.asarray(mask, dtype=np.float64)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    gh, gw = grid
    rows = _overlap_weights(gh, mask.shape[0])
    cols = _overlap_weights(gw, mask.shape[1])
    # Only the mask's bounding box contributes: instance masks are mostly empty, so this is much cheaper.
    row_any, col_any = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if row_any.size == 0:
        return np.zeros((gh, gw), dtype=np.float64)
    y0, y1, x0, x1 = row_any[0], row_any[-1] + 1, col_any[0], col_any[-1] + 1
    return np.clip(rows[:, y0:y1] @ mask[y0:y1, x0:x1] @ cols[:, x0:x1].T, 0.0, 1.0)


def labels_from_mask(
    fg_mask: np.ndarray,
    grid: tuple[int, int] = (24, 24),
    fg_frac: float = FG_FRAC,
    void_mask: np.ndarray | None = None,
    void_ignore_frac: float = VOID_IGNORE_FRAC,
) -> torch.Tensor:
    """Token labels from a pixel mask.

    A token is FG when more than ``fg_frac`` of its non-void pixels are object pixels. Void pixels count as neither
    FG nor BG; a token whose void fraction exceeds ``void_ignore_frac`` is labelled ``IGNORE_INDEX``.

    Args:
        fg_mask: ``[H, W]`` bool, union of all object masks.
        grid: ``(gh, gw)``, e.g. ``(24, 24)`` for a 384x384 input with 16x16 patches.
        fg_frac: FG threshold on the object-pixel fraction (strictly greater than).
        void_mask: optional ``[H, W]`` bool of void pixels (VOC value 255).
        void_ignore_frac: tokens with more void than this are ignored.
    Returns:
        ``[gh, gw]`` int64 tensor in {0, 1, IGNORE_INDEX}.
    """
    fg_mask = np.asarray(fg_mask, dtype=bool)
    fg = area_fractions(fg_mask, grid)
    if void_mask is None:
        fraction, void = fg, np.zeros_like(fg)
    else:
        void_mask = np.asarray(void_mask, dtype=bool)
        if void_mask.shape != fg_mask.shape:
            raise ValueError(f"void mask {void_mask.shape} and FG mask {fg_mask.shape} differ in shape")
        void = area_fractions(void_mask & ~fg_mask, grid)
        valid = 1.0 - void
        fraction = np.divide(fg, valid, out=np.zeros_like(fg), where=valid > 1e-12)
    labels = fg_from_fractions(fraction, fg_frac).astype(np.int64)
    labels[void > void_ignore_frac] = IGNORE_INDEX
    return torch.from_numpy(labels)


def _interval_overlap(a0: np.ndarray, a1: np.ndarray, b0: float, b1: float) -> np.ndarray:
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)


def labels_from_boxes(
    boxes: Iterable[Sequence[float]],
    image_size: tuple[int, int],
    grid: tuple[int, int] = (24, 24),
    rule: str = "coverage",
    tau: float = BOX_TAU,
) -> torch.Tensor:
    """Token labels from boxes (paper Eq. 1-2), with the patch grid over the image.

    A token is FG when, for any box B, ``score(P, B) >= tau``:
      - ``rule="iou"``: the literal Jaccard ``|P∩B| / |P∪B|`` of Eq. 2. A 16x16 patch fully inside a 64x64 box has
        IoU 1/16, so with tau = 0.5 only boxes smaller than ~1.4 patches ever produce FG.
      - ``rule="coverage"`` (default): ``|P∩B| / |P|``, the fraction of the patch inside the box. With tau = 0.5 a
        token is FG when at least half of it lies inside a box, which is what Eq. 1 intends for patches.

    Args:
        boxes: ``(x0, y0, x1, y1)`` in original image pixels.
        image_size: ``(width, height)`` of the original image.
        grid: ``(gh, gw)``.
        rule: ``"coverage"`` or ``"iou"``.
        tau: threshold (``>=``), :data:`BOX_TAU` by default.
    Returns:
        ``[gh, gw]`` int64 tensor in {0, 1}.
    """
    if rule not in ("coverage", "iou"):
        raise ValueError(f"unknown box rule {rule!r}; use 'coverage' or 'iou'")
    width, height = image_size
    gh, gw = grid
    # Work in grid units: a patch is a unit square, so areas are comparable across the square resize.
    edges_x = np.arange(gw, dtype=np.float64)
    edges_y = np.arange(gh, dtype=np.float64)
    labels = np.zeros((gh, gw), dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        bx0, bx1 = x0 * gw / width, x1 * gw / width
        by0, by1 = y0 * gh / height, y1 * gh / height
        if bx1 <= bx0 or by1 <= by0:
            continue
        inter = np.outer(_interval_overlap(edges_y, edges_y + 1, by0, by1), _interval_overlap(edges_x, edges_x + 1, bx0, bx1))
        if rule == "coverage":
            score = inter  # patch area is 1
        else:
            score = inter / (1.0 + (bx1 - bx0) * (by1 - by0) - inter)
        labels |= fg_from_box_scores(score, tau)
    return torch.from_numpy(labels.astype(np.int64))
