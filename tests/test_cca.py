import pytest
import torch

from bavit.core.cca import cca, resample_grid


def grid_from(rows):
    return torch.tensor([[c == "#" for c in row] for row in rows])


def test_three_neighbours_flip_two_do_not():
    grid = grid_from([
        "###..",
        ".....",
        ".....",
        "#.#..",
    ])
    out = cca(grid, steps=1)
    # (1,1) sees (0,0),(0,1),(0,2) -> 3 -> FG. (1,0) sees 2, (1,2) sees 2 -> stay BG.
    # (3,1) sees (3,0),(3,2) -> 2 -> stays BG.
    assert out.tolist() == grid_from([
        "###..",
        ".#...",
        ".....",
        "#.#..",
    ]).tolist()


def test_steps_compound():
    grid = grid_from(["###", "...", "...", "..."])
    step1 = grid_from(["###", ".#.", "...", "..."])
    step2 = grid_from(["###", "###", "...", "..."])
    step3 = grid_from(["###", "###", ".#.", "..."])
    assert cca(grid, steps=1).tolist() == step1.tolist()
    assert cca(grid, steps=2).tolist() == step2.tolist()
    assert cca(grid, steps=3).tolist() == step3.tolist()
    assert cca(grid, steps=3).tolist() == cca(cca(cca(grid, 1), 1), 1).tolist()
    assert cca(grid, steps=0).tolist() == grid.tolist()


def test_fg_never_becomes_bg_and_batch_matches_single():
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(6, 24, 24, generator=generator) > 0.7
    out = cca(batch, steps=3)
    assert out.shape == batch.shape and out.dtype == torch.bool
    assert (out | ~batch).all()  # FG stays FG
    for index in range(len(batch)):
        assert torch.equal(out[index], cca(batch[index], steps=3))


def test_isolated_fg_cell_does_not_grow_and_borders_are_zero_padded():
    grid = torch.zeros(5, 5, dtype=torch.bool)
    grid[0, 0] = True
    assert torch.equal(cca(grid, steps=5), grid)


def test_negative_steps_rejected():
    with pytest.raises(ValueError):
        cca(torch.zeros(3, 3), steps=-1)


def test_resample_24_to_32_nearest_keeps_relative_positions():
    grid = torch.zeros(24, 24, dtype=torch.bool)
    grid[0, 0] = True
    out = resample_grid(grid, (32, 32))
    assert out.shape == (32, 32)
    assert out.nonzero().tolist() == [[0, 0]]
    # Source cell 1 (covering [1/24, 2/24)) is under the centres of output cells 1 and 2.
    grid = torch.zeros(24, 24, dtype=torch.bool)
    grid[1, 23] = True
    assert resample_grid(grid, (32, 32)).nonzero().tolist() == [[1, 31], [2, 31]]
    assert resample_grid(torch.ones(24, 24, dtype=torch.bool), (32, 32)).all()
    half = torch.zeros(24, 24, dtype=torch.bool)
    half[:, :12] = True
    out = resample_grid(half, (32, 32))
    assert out[:, :16].all() and not out[:, 16:].any()


def test_resample_any_mode_never_loses_area():
    grid = torch.zeros(24, 24, dtype=torch.bool)
    grid[0, 0] = True
    # Output cell 1 spans source [0.75, 1.5), overlapping source cells 0 and 1.
    assert resample_grid(grid, (32, 32), mode="any").nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    generator = torch.Generator().manual_seed(1)
    batch = torch.rand(3, 24, 24, generator=generator) > 0.8
    assert (resample_grid(batch, (32, 32), mode="any") | ~resample_grid(batch, (32, 32))).all()


def test_resample_identity_and_downsampling():
    generator = torch.Generator().manual_seed(2)
    grid = torch.rand(24, 24, generator=generator) > 0.5
    assert torch.equal(resample_grid(grid, (24, 24)), grid)
    big = torch.zeros(32, 32, dtype=torch.bool)
    big[4:8, 8:12] = True  # 4x4 block at 32 -> 3x3 block at 24
    assert resample_grid(big, (24, 24)).sum() == 9
    with pytest.raises(ValueError):
        resample_grid(grid, (32, 32), mode="bicubic")
