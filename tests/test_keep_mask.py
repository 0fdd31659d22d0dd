"""The keep-mask rule (bavit.pruning.keep_mask): FG probabilities -> grid (threshold or top-k) -> CCA -> the
detector's keep mask, the search for the keep ratio that keeps a given count, and the closest-index search both
searches share. Hand-made grids with exact answers."""
import torch

import pytest

from bavit.errors import ConfigError
from bavit.pruning.keep_mask import closest_index, keep_mask_from_probs, kept_count, top_k, top_k_counts, top_k_for_kept
from bavit.pruning.settings import PruningSettings


def raw(probs, **selection):
    """The rule's grid before CCA (no CCA, the grid kept at its own size)."""
    return keep_mask_from_probs(probs, PruningSettings(**selection, cca_steps=0), grid=probs.shape[-1]).grid_raw


def test_selection_keeps_probabilities_at_the_threshold():
    probs = torch.tensor([[0.5, 0.49], [0.51, 0.0]])
    assert raw(probs, threshold=0.5).tolist() == [[True, False], [True, False]]


def test_selection_batched_and_ties():
    probs = torch.tensor([[[0.1, 0.9], [0.5, 0.5]], [[0.3, 0.3], [0.3, 0.3]]])
    assert raw(probs, keep_ratio=0.5).tolist() == [[[False, True], [True, False]], [[True, True], [False, False]]]
    assert raw(probs, threshold=0.5).tolist() == [[[False, True], [True, True]], [[False, False], [False, False]]]
    assert top_k(probs, [1, 3]).tolist() == [[[False, True], [False, False]], [[True, True], [True, False]]]


def test_a_calibrated_sparsity_is_refused_by_the_rule():
    with pytest.raises(ConfigError, match="calibration"):
        keep_mask_from_probs(torch.zeros(2, 2), PruningSettings(sparsity=0.35))


def test_kept_count_by_hand():
    assert kept_count(0.35, 32) == 666 and kept_count(0.0, 32) == 1024 and kept_count(0.95, 32) == 51


def test_keep_mask_on_a_hand_made_grid():
    # Three cells pass 0.5 in the top-left corner; the cell they surround, (1, 1), has 3 FG neighbours, so one CCA
    # step adds it, and no other cell ever has 3: the 2x2 corner is the fixed point.
    probs = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.1]])
    corner = [[True, True, False], [True, True, False], [False, False, False]]
    for selection in ({"threshold": 0.5}, {"keep_ratio": 3 / 9}):
        mask = keep_mask_from_probs(probs, PruningSettings(**selection, cca_steps=3), grid=6)
        assert mask.grid_raw.tolist() == [[True, True, False], [True, False, False], [False, False, False]]
        assert mask.grid_cca.tolist() == corner
        # 3 -> 6 doubles each cell: the 2x2 corner becomes the 4x4 corner
        assert mask.keep_mask.tolist() == [[r < 4 and c < 4 for c in range(6)] for r in range(6)]
        assert int(mask.kept_patches) == 16
    no_cca = keep_mask_from_probs(probs, PruningSettings(threshold=0.5, cca_steps=0), grid=3)
    assert torch.equal(no_cca.grid_cca, no_cca.grid_raw) and torch.equal(no_cca.keep_mask, no_cca.grid_raw)
    # 3 -> 5: "nearest" takes source rows 0, 0, 1, 2, 2 (cell centres); "any" keeps every output cell that overlaps
    # a FG source cell (rows 0-3), so it never loses FG area
    assert int(keep_mask_from_probs(probs, PruningSettings(threshold=0.5), grid=5).kept_patches) == 3 * 3
    assert int(keep_mask_from_probs(probs, PruningSettings(threshold=0.5), grid=5, resample="any").kept_patches) == 4 * 4


def test_keep_mask_is_per_image_in_a_batch():
    probs = torch.stack([torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.1]]), torch.full((3, 3), 0.1)])
    mask = keep_mask_from_probs(probs, PruningSettings(threshold=0.5, cca_steps=3), grid=6)
    assert mask.keep_mask.shape == (2, 6, 6) and mask.kept_patches.tolist() == [16, 0]
    single = keep_mask_from_probs(probs[0], PruningSettings(threshold=0.5, cca_steps=3), grid=6)
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
    return int(keep_mask_from_probs(probs, PruningSettings(keep_ratio=ratio, cca_steps=3), grid=grid).keep_mask.sum())


def test_top_k_for_kept_is_the_closest_the_rule_can_reach():
    probs = torch.rand(24, 24, generator=torch.Generator().manual_seed(0))
    reachable = sorted({_kept(probs, k / 576) for k in range(1, 577)})
    for target in (1, 300, 666, 1000, 1024):
        k = top_k_for_kept(probs, target, grid=32)
        best = min(abs(count - target) for count in reachable)
        assert abs(_kept(probs, k / 576) - target) == best
    assert _kept(probs, top_k_for_kept(probs, 1024, grid=32) / 576) == 1024


@pytest.mark.parametrize("sparsity", [0.0, 0.35, 0.6, 0.95])
def test_image_sparsity_is_top_k_at_the_closest_count(sparsity):
    """``image_sparsity`` is the top-k of :func:`top_k_for_kept` at :func:`kept_count`, per image of a batch."""
    probs = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = keep_mask_from_probs(probs, PruningSettings(image_sparsity=sparsity, cca_steps=3), grid=32)
    for image, kept in zip(probs, mask.kept_patches.tolist()):
        k = top_k_for_kept(image, kept_count(sparsity, 32), grid=32)
        assert kept == _kept(image, k / 256)
        assert abs(kept - kept_count(sparsity, 32)) == min(abs(_kept(image, j / 256) - kept_count(sparsity, 32))
                                                             for j in range(1, 257))


@pytest.mark.parametrize("cca_steps,resample", [(0, "nearest"), (3, "nearest"), (3, "any")])
def test_top_k_counts_searches_every_image_as_closest_index_searches_one(cca_steps, resample):
    """The batched search gives each image the k that :func:`closest_index` finds for it alone (ties: more kept),
    on soft blobs, on flat grids (every k ties) and on grids where many k give the same count."""
    from conftest import blob_probs

    probs = torch.cat([blob_probs(12, seed=3), torch.full((1, 24, 24), 0.5), torch.zeros(1, 24, 24),
                       torch.rand(2, 24, 24, generator=torch.Generator().manual_seed(4)).round(decimals=1)])
    for target in (1, 333, 666, 1000, 1024):
        def reference(image):
            def count(k):
                return int(keep_mask_from_probs(image, PruningSettings(keep_ratio=k / 576, cca_steps=cca_steps),
                                                grid=32, resample=resample).keep_mask.sum())
            return closest_index(count, 1, 576, target, ties="high")

        assert top_k_counts(probs, target, 32, cca_steps, resample) == [reference(image) for image in probs]
