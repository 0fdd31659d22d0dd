"""The keep-mask rule (bavit.pruning.keep_mask): FG probabilities -> grid (threshold or top-k) -> CCA -> the
detector's keep mask, the search for the keep ratio that keeps a given count, and the closest-index search both
searches share. Hand-made grids with exact answers."""
import torch

from bavit.pruning.keep_mask import closest_index, keep_mask_from_probs, keep_ratio_for_count, select_patches


def test_select_patches_keeps_probabilities_at_the_threshold():
    probs = torch.tensor([[0.5, 0.49], [0.51, 0.0]])
    assert select_patches(probs, threshold=0.5).tolist() == [[True, False], [True, False]]


def test_select_patches_batched_and_ties():
    probs = torch.tensor([[[0.1, 0.9], [0.5, 0.5]], [[0.3, 0.3], [0.3, 0.3]]])
    assert select_patches(probs, keep_ratio=0.5).tolist() == [[[False, True], [True, False]], [[True, True], [False, False]]]
    assert select_patches(probs, threshold=0.5).tolist() == [[[False, True], [True, True]], [[False, False], [False, False]]]


def test_keep_mask_on_a_hand_made_grid():
    # Three cells pass 0.5 in the top-left corner; the cell they surround, (1, 1), has 3 FG neighbours, so one CCA
    # step adds it, and no other cell ever has 3: the 2x2 corner is the fixed point.
    probs = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.1]])
    corner = [[True, True, False], [True, True, False], [False, False, False]]
    for selection in ({"threshold": 0.5}, {"keep_ratio": 3 / 9}):
        mask = keep_mask_from_probs(probs, **selection, cca_steps=3, grid=6)
        assert mask.grid_raw.tolist() == [[True, True, False], [True, False, False], [False, False, False]]
        assert mask.grid_cca.tolist() == corner
        # 3 -> 6 doubles each cell: the 2x2 corner becomes the 4x4 corner
        assert mask.keep_mask.tolist() == [[r < 4 and c < 4 for c in range(6)] for r in range(6)]
        assert int(mask.kept_patches) == 16
    no_cca = keep_mask_from_probs(probs, threshold=0.5, cca_steps=0, grid=3)
    assert torch.equal(no_cca.grid_cca, no_cca.grid_raw) and torch.equal(no_cca.keep_mask, no_cca.grid_raw)
    # 3 -> 5: "nearest" takes source rows 0, 0, 1, 2, 2 (cell centres); "any" keeps every output cell that overlaps
    # a FG source cell (rows 0-3), so it never loses FG area
    assert int(keep_mask_from_probs(probs, threshold=0.5, grid=5).kept_patches) == 3 * 3
    assert int(keep_mask_from_probs(probs, threshold=0.5, grid=5, resample="any").kept_patches) == 4 * 4


def test_keep_mask_is_per_image_in_a_batch():
    probs = torch.stack([torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.1]]), torch.full((3, 3), 0.1)])
    mask = keep_mask_from_probs(probs, threshold=0.5, cca_steps=3, grid=6)
    assert mask.keep_mask.shape == (2, 6, 6) and mask.kept_patches.tolist() == [16, 0]
    single = keep_mask_from_probs(probs[0], threshold=0.5, cca_steps=3, grid=6)
    assert torch.equal(mask.keep_mask[0], single.keep_mask)


def test_closest_index_by_hand():
    values = [0.0, 2.0, 2.0, 5.0, 9.0]  # never falls as the index grows

    def closest(target, ties="low", low=0):
        return closest_index(values.__getitem__, low, len(values) - 1, target, ties=ties)

    assert closest(3.0) == 2  # 2 is 1 away, 5 is 2 away
    assert closest(2.0) == 1  # the first index that reaches the target exactly
    assert closest(3.5) == 2 and closest(3.5, ties="high") == 3  # 2 and 5 are both 1.5 away
    assert closest(-1.0) == 0 and closest(100.0) == 4  # beyond either end: the end
    assert closest(-1.0, low=2) == 2  # never below ``low``


def _kept(probs, ratio, grid=32):
    return int(keep_mask_from_probs(probs, keep_ratio=ratio, cca_steps=3, grid=grid).keep_mask.sum())


def test_keep_ratio_for_count_is_the_closest_the_rule_can_reach():
    probs = torch.rand(24, 24, generator=torch.Generator().manual_seed(0))
    reachable = sorted({_kept(probs, k / 576) for k in range(1, 577)})
    for target in (1, 300, 666, 1000, 1024):
        ratio = keep_ratio_for_count(probs, target, grid=32)
        best = min(abs(count - target) for count in reachable)
        assert abs(_kept(probs, ratio) - target) == best
    assert _kept(probs, keep_ratio_for_count(probs, 1024, grid=32)) == 1024
