"""Token accounting against the paper's Table 2 and MAC counts against hand computation."""
import pytest
from transformers import YolosConfig

from bavit.core.config import LARGE, SMALL, BAViTConfig
from bavit.pruning.accounting import (
    accounting_at_sparsity,
    bavit_macs,
    embed_macs,
    mean_accounting,
    token_accounting,
    yolos_macs,
)


def test_table2_row_at_35_percent():
    row = accounting_at_sparsity(0.35)
    assert row.bavit_tokens == 576 * 2 == 1152
    assert row.yolos_dense_tokens == 1024 * 12 == 12288
    assert row.yolos_pruned_tokens == 7987  # 12288 * 0.65 = 7987.2, truncated as in the paper
    assert row.total_tokens == 9139
    assert f"{row.reduction_pct:.2f}" == "25.63"
    assert row.sparsity == pytest.approx(0.35)


def test_table2_row_at_0_percent():
    # (12288 - 13440) / 12288 = -9.375% exactly. The paper prints -9.40: it rounded this row to one decimal
    # (-9.4), as it did the 32% and 29% rows (22.63 -> 22.60, 19.63 -> 19.60); its token counts all agree.
    row = accounting_at_sparsity(0.0)
    assert row.yolos_pruned_tokens == 12288
    assert row.total_tokens == 13440
    assert row.reduction_pct == -9.375
    assert f"{row.reduction_pct:.2f}" == "-9.38"


@pytest.mark.parametrize(
    "sparsity, pruned, total, reduction",
    [(0.46, 6635, 7787, "36.63"), (0.43, 7004, 8156, "33.63"), (0.40, 7372, 8524, "30.63"),
     (0.39, 7495, 8647, "29.63"), (0.37, 7741, 8893, "27.63"), (0.05, 11673, 12825, "-4.37")],
)
def test_other_table2_rows(sparsity, pruned, total, reduction):
    row = accounting_at_sparsity(sparsity)
    assert (row.yolos_pruned_tokens, row.total_tokens, f"{row.reduction_pct:.2f}") == (pruned, total, reduction)


def test_one_image_and_the_mean_over_images():
    one = token_accounting(666)
    assert one.yolos_pruned_tokens == 666 * 12 and one.total_tokens == 1152 + 7992
    mean = mean_accounting([token_accounting(600), token_accounting(700)])
    assert mean.kept_patches == 650 and mean.yolos_pruned_tokens == 7800
    # Eq. 4: the mean of per-image reductions equals the reduction at the mean count.
    per_image = [token_accounting(k).reduction_pct for k in (600, 700)]
    assert mean.reduction_pct == pytest.approx(sum(per_image) / 2)


def test_bavit_depth_comes_from_its_config():
    assert token_accounting(500, bavit_config=LARGE).bavit_tokens == 576 * 10
    assert token_accounting(500, bavit_config=BAViTConfig(img_size=256, depth=3)).bavit_tokens == 256 * 3


def test_kept_patches_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1024\]"):
        token_accounting(1025)
    with pytest.raises(ValueError, match="fraction"):
        accounting_at_sparsity(35)


def test_yolos_macs_by_hand_for_a_tiny_config():
    config = YolosConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                         image_size=[32, 32], patch_size=16, num_detection_tokens=3, num_labels=5)
    # 64x48 input: 4x3 = 12 patches of 16x16x3.
    embed = 12 * (3 * 16 * 16) * 8
    heads = 3 * ((8 * 8 + 8 * 8 + 8 * 6) + (8 * 8 + 8 * 8 + 8 * 4))  # class MLP (5 labels + no-object), box MLP

    def layer(n):  # q, k, v, out: 4 n D^2; fc1, fc2: 2 n D I; QK^T and AV: 2 n^2 D
        return 4 * n * 8 * 8 + 2 * n * 8 * 16 + 2 * n * n * 8

    dense = embed + 2 * layer(1 + 12 + 3) + heads
    pruned = embed + 2 * layer(1 + 5 + 3) + heads
    assert yolos_macs(config, None, (64, 48)) == dense
    assert yolos_macs(config, 5, (64, 48)) == pruned
    accounting = token_accounting(5, config, SMALL, image_size=(64, 48))
    assert (accounting.dense_macs, accounting.pruned_macs, accounting.yolos_patches) == (dense, pruned, 12)


def test_bavit_macs_by_hand():
    config = BAViTConfig(img_size=32, patch_size=16, embed_dim=6, num_heads=2, depth=3, mlp_ratio=2.0)
    n, d, i = 4, 6, 12
    expected = n * 3 * 16 * 16 * d + 3 * (4 * n * d * d + 2 * n * d * i + 2 * n * n * d) + n * d * 2
    assert bavit_macs(config) == expected


@pytest.mark.parametrize("stem", ["patch", "conv", "conv-deep", "lite0", "lite0-4"])
def test_bavit_macs_is_what_flopcountermode_counts_on_the_whole_model(stem):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from bavit.core.model import build_bavit

    config = BAViTConfig(img_size=64, depth=2, stem=stem)  # 4x4 tokens
    model = build_bavit(config).eval()
    counter = FlopCounterMode(display=False)
    # the math backend runs attention as two batched matmuls, which FlopCounterMode counts (the fused CPU kernel it
    # does not count at all)
    with sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert bavit_macs(config) == counter.get_total_flops() // 2
    tokens, width = 16, 192
    assert bavit_macs(config) - embed_macs(config) == (
        2 * (4 * tokens * width**2 + 2 * tokens * width * 4 * width + 2 * tokens**2 * width) + tokens * width * 2)
    if stem == "patch":
        assert embed_macs(config) == tokens * 3 * 16 * 16 * width


def test_flop_ratio_at_35_percent_is_the_arithmetic_limit():
    row = accounting_at_sparsity(0.35)
    assert row.pipeline_macs == row.bavit_macs + row.pruned_macs
    assert 1.50 < row.flop_ratio < 1.56  # ~1.54x: what BAViT-small + pruned YOLOS-tiny can gain at most
    assert set(row.as_dict()) >= {"bavit_tokens", "yolos_dense_tokens", "yolos_pruned_tokens", "total_tokens",
                                  "reduction_pct", "sparsity", "kept_patches", "dense_macs", "pruned_macs"}
