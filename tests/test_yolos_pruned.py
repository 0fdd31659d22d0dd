"""Exactness of the token-pruned YOLOS patch against transformers' dense model (tiny configs, no download)."""
import threading

import pytest
import torch
from transformers import ViTConfig, ViTModel, YolosConfig, YolosForObjectDetection
from transformers.models.yolos.modeling_yolos import YolosSelfAttention

from bavit.pruning.yolos import PrunedSelfAttentionMixin, patch_yolos, sequence_index

GRID = (4, 6)  # 64x96 input, 16 px patches
NUM_DET = 5


def tiny_yolos(mid: bool = False, seed: int = 0, attn: str = "sdpa") -> YolosForObjectDetection:
    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[48, 80],  # position embeddings are interpolated to the 64x96 input, as YOLOS does at 512
        patch_size=16,
        num_detection_tokens=NUM_DET,
        num_labels=4,
        use_mid_position_embeddings=mid,
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    model = YolosForObjectDetection(config).eval()
    with torch.no_grad():  # the default init leaves CLS/det/position embeddings at zero: make them matter
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, GRID[0] * 16, GRID[1] * 16, generator=torch.Generator().manual_seed(seed))


def random_mask(batch: int, seed: int = 2, p: float = 0.5) -> torch.Tensor:
    return torch.rand(batch, *GRID, generator=torch.Generator().manual_seed(seed)) < p


def dense_by_hand(model, pixel_values, keep_mask):
    """The dense model's own modules on the gathered sequence ``[CLS, kept patches, det]`` of one image."""
    vit = model.vit
    embeddings = vit.embeddings(pixel_values)  # position embeddings (interpolated) already added
    keep = keep_mask.reshape(-1)
    num_patches = keep.numel()
    index = torch.cat([torch.tensor([0]), 1 + torch.nonzero(keep)[:, 0], 1 + num_patches + torch.arange(NUM_DET)])
    hidden = embeddings[:, index]
    height, width = pixel_values.shape[-2:]
    mid = None
    if model.config.use_mid_position_embeddings:
        mid = vit.encoder.interpolation(vit.encoder.mid_position_embeddings, (height, width))[:, :, index]
    for depth, layer in enumerate(vit.encoder.layer):
        hidden = layer(hidden)
        if mid is not None and depth < len(vit.encoder.layer) - 1:
            hidden = hidden + mid[depth]
    hidden = vit.layernorm(hidden)
    detection = hidden[:, -NUM_DET:]
    return model.class_labels_classifier(detection), model.bbox_predictor(detection).sigmoid(), hidden


@pytest.mark.parametrize("mid", [False, True])
def test_nothing_pruned_equals_dense(mid):
    model = tiny_yolos(mid)
    x = pixels()
    with torch.no_grad():
        dense = model(pixel_values=x)
        patch_yolos(model)
        assert patch_yolos(model) is model  # idempotent
        same = model(pixel_values=x)  # keep_mask=None: the unmodified forward
        full_keep = model(pixel_values=x, keep_mask=torch.ones(2, *GRID, dtype=torch.bool))
    assert torch.equal(same.logits, dense.logits) and torch.equal(same.pred_boxes, dense.pred_boxes)
    assert (full_keep.logits - dense.logits).abs().max() <= 1e-5
    assert (full_keep.pred_boxes - dense.pred_boxes).abs().max() <= 1e-5
    assert full_keep.last_hidden_state.shape == dense.last_hidden_state.shape


@pytest.mark.parametrize("mid", [False, True])
def test_pruned_equals_dense_encoder_on_gathered_sequence(mid):
    model = patch_yolos(tiny_yolos(mid))
    x = pixels(batch=1)
    keep = random_mask(1)
    assert 0 < int(keep.sum()) < keep.numel()
    with torch.no_grad():
        out = model(pixel_values=x, keep_mask=keep)
        logits, boxes, hidden = dense_by_hand(model, x, keep[0])
    assert out.logits.shape == (1, NUM_DET, 5) and out.pred_boxes.shape == (1, NUM_DET, 4)
    assert (out.logits - logits).abs().max() <= 1e-5
    assert (out.pred_boxes - boxes).abs().max() <= 1e-5
    assert (out.last_hidden_state - hidden).abs().max() <= 1e-5
    assert out.kept_patches.tolist() == [int(keep.sum())]


@pytest.mark.parametrize("mid", [False, True])
def test_forward_kept_the_onnx_path_equals_forward_with_a_keep_mask(mid):
    """The index form the ONNX export traces is the same pruned forward as the keep-mask form, per image."""
    model = patch_yolos(tiny_yolos(mid=mid))
    x, mask = pixels(2), random_mask(2)
    with torch.no_grad():
        batched = model(pixel_values=x, keep_mask=mask)
        for b in range(2):
            logits, boxes = model.forward_kept(x[b : b + 1], torch.nonzero(mask[b].reshape(-1))[:, 0])
            expected_logits, expected_boxes, _ = dense_by_hand(model, x[b : b + 1], mask[b])
            torch.testing.assert_close(logits, batched.logits[b : b + 1], rtol=0, atol=1e-5)
            torch.testing.assert_close(boxes, batched.pred_boxes[b : b + 1], rtol=0, atol=1e-5)
            torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-5)
            torch.testing.assert_close(boxes, expected_boxes, rtol=0, atol=1e-5)


def test_all_background_still_returns_every_detection():
    model = patch_yolos(tiny_yolos())
    x = pixels()
    with torch.no_grad():
        out = model(pixel_values=x, keep_mask=torch.zeros(2, *GRID, dtype=torch.bool))
        logits, _, _ = dense_by_hand(model, x[:1], torch.zeros(GRID, dtype=torch.bool))
    assert out.logits.shape == (2, NUM_DET, 5) and out.pred_boxes.shape == (2, NUM_DET, 4)
    assert out.last_hidden_state.shape == (2, 1 + NUM_DET, 32)  # CLS + detection tokens only
    assert (out.logits[:1] - logits).abs().max() <= 1e-5


@pytest.mark.parametrize("batch_mode", ["per_image", "padded"])
@pytest.mark.parametrize("mid", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_mixed_keep_counts_equal_per_image_results(batch_mode, mid, attn):
    """Per-image and padded batches equal single runs and the dense modules by hand, whatever attention the model
    was loaded with (the padded key mask reaches the patched self-attention, never transformers' head mask)."""
    model = patch_yolos(tiny_yolos(mid, attn=attn))
    x = pixels(batch=3)
    keep = random_mask(3, p=0.6)
    keep[1] = False
    keep[1, 0, :2] = True  # 2 kept patches
    keep[2] = True  # all kept
    counts = keep.sum((1, 2)).tolist()
    assert len(set(counts)) == 3
    with torch.no_grad():
        batched = model(pixel_values=x, keep_mask=keep, batch_mode=batch_mode, output_full_hidden_state=True)
        singles = [model(pixel_values=x[i : i + 1], keep_mask=keep[i : i + 1], output_full_hidden_state=True) for i in range(3)]
        by_hand = [dense_by_hand(model, x[i : i + 1], keep[i]) for i in range(3)]
    for i, (single, (logits, boxes, _)) in enumerate(zip(singles, by_hand)):
        assert (batched.logits[i] - single.logits[0]).abs().max() <= 1e-5
        assert (batched.pred_boxes[i] - single.pred_boxes[0]).abs().max() <= 1e-5
        assert (batched.last_hidden_state[i] - single.last_hidden_state[0]).abs().max() <= 1e-5
        assert (batched.logits[i] - logits[0]).abs().max() <= 1e-5
        assert (batched.pred_boxes[i] - boxes[0]).abs().max() <= 1e-5
    assert batched.kept_patches.tolist() == counts


def self_attentions(model):
    return [module for module in model.modules() if isinstance(module, YolosSelfAttention)]


def test_patch_swaps_every_self_attention_and_shares_one_state():
    model = tiny_yolos()
    patch_yolos(model)
    patch_yolos(model, batch_mode="padded")  # idempotent: same classes, same state
    state = model._bavit_info
    attentions = self_attentions(model)
    assert len(attentions) == model.config.num_hidden_layers
    for module in attentions:
        assert isinstance(module, PrunedSelfAttentionMixin)
        assert type(module).__bases__ == (PrunedSelfAttentionMixin, YolosSelfAttention)
        assert module._bavit_info is state
    assert len({type(module) for module in attentions}) == 1  # one subclass, made once
    assert state.key_mask is None


def test_key_mask_state_is_reset_after_forward_and_after_errors():
    model = patch_yolos(tiny_yolos(), batch_mode="padded")
    state = model._bavit_info
    x = pixels(batch=2)
    keep = random_mask(2)
    keep[1] = True  # different counts: padded run with a key mask
    seen = []
    hook = model.vit.encoder.layer[1].attention.attention.register_forward_pre_hook(
        lambda module, args: seen.append(module._bavit_info.key_mask)
    )
    with torch.no_grad():
        model(pixel_values=x, keep_mask=keep)
    hook.remove()
    assert seen and seen[0] is not None and seen[0].shape == (2, 1, 1, 1 + GRID[0] * GRID[1] + NUM_DET)
    assert state.key_mask is None
    with pytest.raises(ValueError):
        model(pixel_values=x, keep_mask=torch.ones(2, 6, 4, dtype=torch.bool))
    assert state.key_mask is None

    def fail(module, args):
        raise RuntimeError("layer failed")

    hook = model.vit.encoder.layer[1].register_forward_pre_hook(fail)
    with torch.no_grad(), pytest.raises(RuntimeError, match="layer failed"):
        model(pixel_values=x, keep_mask=keep)
    hook.remove()
    assert state.key_mask is None
    with torch.no_grad():  # the dense forward still is transformers' own
        assert torch.equal(model(pixel_values=x).logits, tiny_yolos()(pixel_values=x).logits)


def test_concurrent_pruned_forwards_in_two_threads_match_running_alone():
    model = patch_yolos(tiny_yolos(), batch_mode="padded")
    x = pixels(batch=3)
    keep_a = random_mask(3, seed=3, p=0.5)
    keep_a[0] = True  # mixed counts: padded, key mask set
    keep_b = random_mask(3, seed=4, p=0.3)
    keep_b[2] = False
    keep_b[2, 0, 0] = True
    assert len(set(keep_a.sum((1, 2)).tolist())) > 1 and len(set(keep_b.sum((1, 2)).tolist())) > 1
    with torch.no_grad():
        alone = {name: model(pixel_values=x, keep_mask=keep) for name, keep in (("a", keep_a), ("b", keep_b))}
    barrier = threading.Barrier(2)
    errors, results = [], {"a": [], "b": []}

    def run(name, keep):
        try:
            barrier.wait(timeout=30)
            with torch.no_grad():
                for _ in range(8):
                    results[name].append(model(pixel_values=x, keep_mask=keep))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=args) for args in (("a", keep_a), ("b", keep_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for name in ("a", "b"):
        assert len(results[name]) == 8
        for out in results[name]:
            assert (out.logits - alone[name].logits).abs().max() <= 1e-5
            assert (out.pred_boxes - alone[name].pred_boxes).abs().max() <= 1e-5
    assert model._bavit_info.key_mask is None


def test_full_hidden_state_has_zeros_at_pruned_positions():
    model = patch_yolos(tiny_yolos())
    x = pixels()
    keep = random_mask(2)
    with torch.no_grad():
        out = model(pixel_values=x, keep_mask=keep, output_full_hidden_state=True)
        _, _, hidden0 = dense_by_hand(model, x[:1], keep[0])
    num_patches = GRID[0] * GRID[1]
    full = out.last_hidden_state
    assert full.shape == (2, 1 + num_patches + NUM_DET, 32)
    patch_nonzero = full[:, 1 : 1 + num_patches].abs().sum(-1) > 0
    assert torch.equal(patch_nonzero, keep.reshape(2, -1))
    kept_rows = 1 + torch.nonzero(keep[0].reshape(-1))[:, 0]
    assert torch.allclose(full[0, kept_rows], hidden0[0, 1:-NUM_DET], atol=1e-5)
    assert torch.allclose(full[0, 0], hidden0[0, 0], atol=1e-5)  # CLS first
    assert torch.allclose(full[0, -NUM_DET:], hidden0[0, -NUM_DET:], atol=1e-5)  # detection tokens last


def test_sequence_index_layout():
    keep = torch.tensor([[True, False, True, False], [False, False, False, True]])
    index, valid = sequence_index(keep, num_patches=4, num_det=2)
    assert index.tolist() == [[0, 1, 3, 5, 6], [0, 4, 0, 5, 6]]
    assert valid.tolist() == [[True] * 5, [True, True, False, True, True]]


def test_loss_through_transformers_with_labels():
    model = patch_yolos(tiny_yolos())
    model.train()
    x = pixels()
    labels = [
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])},
        {"class_labels": torch.tensor([0, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])},
    ]
    out = model(pixel_values=x, keep_mask=random_mask(2), labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= set(out.loss_dict)
    out.loss.backward()
    assert model.vit.encoder.layer[0].attention.attention.query.weight.grad is not None
    model.eval()
    with torch.no_grad():  # same loss as transformers' dense forward when nothing is pruned
        dense = model(pixel_values=x, labels=labels)
        pruned = model(pixel_values=x, keep_mask=torch.ones(2, *GRID, dtype=torch.bool), labels=labels)
    assert abs(float(dense.loss) - float(pruned.loss)) <= 1e-4


def test_bad_keep_mask_shape_names_both_shapes():
    model = patch_yolos(tiny_yolos())
    with pytest.raises(ValueError, match=r"\[2, 4, 6\].*got \[2, 6, 4\]"):
        model(pixel_values=pixels(), keep_mask=torch.ones(2, 6, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got \[4, 6\]"):
        model(pixel_values=pixels(), keep_mask=torch.ones(4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean"):
        model(pixel_values=pixels(), keep_mask=torch.ones(2, 4, 6))


def test_non_yolos_model_is_refused():
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(TypeError, match="YolosForObjectDetection.*ViTModel"):
        patch_yolos(vit)


def test_save_pretrained_writes_plain_yolos(tmp_path):
    model = patch_yolos(tiny_yolos())
    model.save_pretrained(tmp_path)
    assert type(model).__name__ == "PrunedYolosForObjectDetection"
    assert all(isinstance(module, PrunedSelfAttentionMixin) for module in self_attentions(model))  # still patched
    reloaded = YolosForObjectDetection.from_pretrained(tmp_path)
    assert reloaded.config.architectures == ["YolosForObjectDetection"]
    assert type(reloaded) is YolosForObjectDetection
    assert all(type(module).__module__.startswith(("transformers.", "torch.")) for module in reloaded.modules())
    assert not hasattr(reloaded, "_bavit_info")
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
