"""CCA post-process (paper appendix, Fig. 5-6) and grid resampling between patch grids.

Grids are boolean or {0,1} tensors of shape ``[H, W]`` or ``[B, H, W]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# 8-neighbourhood: the centre does not count, so a BG cell's output is its number of FG neighbours.
NEIGHBOUR_KERNEL = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])


def cca(grid: torch.Tensor, steps: int = 3, min_neighbours: int = 3) -> torch.Tensor:
    """Grow the FG grid: a BG cell with more than 2 FG neighbours (output > 2) becomes FG; FG never becomes BG.

    Args:
        grid: ``[H, W]`` or ``[B, H, W]`` bool / {0,1} grid, FG = 1.
        steps: how many times the 3x3 convolution is applied (paper default 3; 0 returns the input).
        min_neighbours: a BG cell flips when it has at least this many FG neighbours (paper: output > 2, i.e. 3).
    Returns:
        bool tensor of the same shape.
    """
    if steps < 0:
        raise ValueError(f"CCA steps must be >= 0, got {steps}")
    squeeze = grid.dim() == 2
    fg = grid.bool()
    if squeeze:
        fg = fg[None]
    if fg.dim() != 3:
        raise ValueError(f"grid must be [H, W] or [B, H, W], got shape {tuple(grid.shape)}")
    kernel = NEIGHBOUR_KERNEL.to(fg.device)[None, None]
    for _ in range(steps):
        counts = F.conv2d(fg.float()[:, None], kernel, padding=1)[:, 0]
        grown = fg | (counts >= min_neighbours - 0.5)
        if torch.equal(grown, fg):
            break
        fg = grown
    return fg[0] if squeeze else fg


def resample_grid(grid: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Resample a patch grid to another grid size, keeping relative positions (paper §3.5: 24x24 -> 32x32).

    Args:
        grid: ``[H, W]`` or ``[B, H, W]`` bool grid.
        size: output ``(H', W')``.
        mode: ``"nearest"``: each output cell takes the source cell under its centre;
            ``"any"``: an output cell is FG when any source cell it overlaps is FG (never loses FG area).
    Returns:
        bool tensor ``[H', W']`` or ``[B, H', W']``.
    """
    squeeze = grid.dim() == 2
    fg = grid.bool()
    if squeeze:
        fg = fg[None]
    out_h, out_w = size
    if mode == "nearest":
        out = F.interpolate(fg.float()[:, None], size=(out_h, out_w), mode="nearest-exact")[:, 0] > 0.5
    elif mode == "any":
        out = _overlap_any(_overlap_any(fg, out_h, dim=1), out_w, dim=2)
    else:
        raise ValueError(f"unknown resample mode {mode!r}; use 'nearest' or 'any'")
    return out[0] if squeeze else out


def _overlap_any(fg: torch.Tensor, out_len: int, dim: int) -> torch.Tensor:
    """OR over the source cells that each output cell overlaps along one axis of a ``[B, H, W]`` grid."""
    in_len = fg.shape[dim]
    rows = []
    for i in range(out_len):
        start = (i * in_len) // out_len
        stop = -(-((i + 1) * in_len) // out_len)  # ceil
        rows.append(fg.narrow(dim, start, stop - start).any(dim=dim, keepdim=True))
    return torch.cat(rows, dim=dim)
