"""Token-pruned YOLOS (paper §3.5): a ToMe-style patch over ``transformers``' ``YolosForObjectDetection``.

``patch_yolos(model)`` swaps the model's class for a subclass whose ``forward`` also takes a ``keep_mask``
(``bool [B, H/16, W/16]``, True = FG patch to compute). Nothing is copied: the embeddings, encoder layers, final
layer norm, heads and loss are transformers' own modules, called on a shorter sequence. As in ToMe, the patch also
swaps the class of every self-attention module (:class:`PrunedSelfAttentionMixin`): they read a padded batch's key
mask from a per-thread state the patch owns (``model._bavit_info``), so two threads (the Predictor's) can run
pruned forwards on one model at the same time; with no mask set, they are transformers' unmodified forward.

Pruned sequence, per image: ``[CLS, kept patch tokens (row-major), detection tokens]``. Kept patch tokens are
gathered *after* the (interpolated) position embeddings are added, the 100 detection tokens stay last (the heads
read the last 100 tokens) and every encoder layer runs on the kept tokens only. Mid-layer position embeddings
(yolos-small/base) are interpolated as transformers does, then gathered with the same indices.

Batches whose images keep different numbers of patches run in one of two ways (``batch_mode``):

* ``"padded"``: one batched run; each sequence is padded to the longest, pads sit between the kept patches and
  the detection tokens (so the detection tokens stay last) and a boolean key mask hides them from every query:
  the patched self-attention then runs ``torch.nn.functional.scaled_dot_product_attention`` with that mask,
  whatever attention implementation the model was loaded with (so padded batches also work under "eager").
* ``"per_image"``: one run per image, no padding and no mask.

``"per_image"`` is the default (fewer FLOPs, faster on this project's CPU: docs/results.md,
``python -m benchmarks.batch_modes``). Batches whose images all keep the same count always run batched without
padding, through the model's own attention implementation.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from transformers import YolosForObjectDetection
from transformers.models.yolos.modeling_yolos import YolosObjectDetectionOutput, YolosSelfAttention

from ..errors import ConfigError

BATCH_MODES = ("per_image", "padded")
DEFAULT_BATCH_MODE = "per_image"


@dataclass
class PrunedYolosOutput(YolosObjectDetectionOutput):
    """YOLOS output plus ``kept_patches`` (``LongTensor [B]``, patch tokens each image kept).

    ``last_hidden_state`` (after the final layer norm) is ``[B, 1 + N + 100, D]`` with zeros at pruned patch
    positions when ``output_full_hidden_state=True`` (paper §3.5), else the compact ``[B, 1 + K_max + 100, D]``
    sequence ``[CLS, kept patches, zero pads, detection tokens]``.
    """

    kept_patches: Optional[torch.LongTensor] = None


def check_keep_mask(keep_mask, batch_size: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Validate a keep mask and flatten it to ``bool [B, gh * gw]`` (row-major, like YOLOS' patch order).

    Raises:
        ValueError: wrong shape (the message gives the expected and the given shape) or a float mask.
    """
    mask = torch.as_tensor(np.asarray(keep_mask) if not isinstance(keep_mask, torch.Tensor) else keep_mask)
    expected = (batch_size, grid[0], grid[1])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"keep_mask must have shape [B, H/patch, W/patch] = {list(expected)} for this input, "
            f"got {list(mask.shape)}"
        )
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"keep_mask must be boolean (True = keep the patch), got dtype {mask.dtype}")
    return mask.to(device=device).bool().reshape(batch_size, -1)


def sequence_index(keep: torch.Tensor, num_patches: int, num_det: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in the dense ``[CLS, N patches, det]`` sequence that the pruned sequence takes.

    Args:
        keep: ``bool [B, N]`` flattened keep mask.
        num_patches: ``N``.
        num_det: detection tokens (100).
    Returns:
        ``index`` ``long [B, 1 + K_max + num_det]`` (pads point at CLS) and ``valid`` ``bool`` of the same shape
        (False at pads). Layout per row: CLS, kept patches in row-major order, pads, detection tokens.
    """
    batch, _ = keep.shape
    counts = keep.sum(1)
    k_max = int(counts.max()) if batch else 0
    # Stable sort puts kept patches first, in their original (row-major) order.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :k_max]
    slot_valid = torch.arange(k_max, device=keep.device)[None] < counts[:, None]
    patch_index = torch.where(slot_valid, order + 1, torch.zeros_like(order))
    cls_index = torch.zeros(batch, 1, dtype=torch.long, device=keep.device)
    det_index = (1 + num_patches + torch.arange(num_det, device=keep.device)).expand(batch, -1)
    index = torch.cat([cls_index, patch_index, det_index], dim=1)
    ones = torch.ones(batch, 1, dtype=torch.bool, device=keep.device)
    valid = torch.cat([ones, slot_valid, ones.expand(batch, num_det)], dim=1)
    return index, valid


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens [B or 1, S, D]`` gathered at ``index [B, S']`` -> ``[B, S', D]``."""
    tokens = tokens.expand(index.shape[0], -1, -1)
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


_PATCHED_ATTENTION_CLASSES: dict[type, type] = {}


class PruningState(threading.local):
    """The patch's state, shared by a patched model and all its self-attention modules (``_bavit_info``).

    ``key_mask`` (``bool [b, 1, 1, S]``, True = attend, or None) is per thread: :meth:`PrunedYolosMixin._encode`
    sets it around the encoder layers in the calling thread, so concurrent forwards on one model never see each
    other's masks. Copies (``copy.deepcopy``, pickle) get a fresh state with no mask set. The flip side: layers
    run outside the forward's own call in its own thread (``torch.nn.DataParallel`` replicas, gradient-checkpointing
    recomputation during backward) would not see the mask; the patch supports neither.
    """

    key_mask: Optional[torch.Tensor] = None

    def __reduce__(self):
        return (type(self), ())


class PrunedSelfAttentionMixin:
    """Mixed in front of ``YolosSelfAttention`` (or a subclass) by :func:`patch_yolos`."""

    _bavit_info: PruningState

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        """Copied from transformers.models.yolos.modeling_yolos.YolosSelfAttention.forward, with modifications:
        when the patch's state holds a key mask (``bool [b, 1, 1, S]``, True = attend), attention runs through
        ``torch.nn.functional.scaled_dot_product_attention`` with that mask, so pads are hidden from every query;
        without one, this is transformers' own forward.

        Returns:
            ``(context [b, S, all_head_size], None)`` with a key mask (no attention probabilities), else whatever
            transformers' forward returns.
        """
        key_mask = self._bavit_info.key_mask
        if key_mask is None:
            return super().forward(hidden_states, *args, **kwargs)
        if any(arg is not None for arg in args) or any(value is not None for value in kwargs.values()):
            raise ValueError("pruned YOLOS attention with a padding key mask takes no head mask or other arguments")
        batch_size = hidden_states.shape[0]
        new_shape = batch_size, -1, self.num_attention_heads, self.attention_head_size

        key_layer = self.key(hidden_states).view(*new_shape).transpose(1, 2)
        value_layer = self.value(hidden_states).view(*new_shape).transpose(1, 2)
        query_layer = self.query(hidden_states).view(*new_shape).transpose(1, 2)

        context_layer = torch.nn.functional.scaled_dot_product_attention(
            query_layer,
            key_layer,
            value_layer,
            attn_mask=key_mask,
            dropout_p=self.dropout_prob if self.training else 0.0,
            scale=self.scaling,
        )
        context_layer = context_layer.transpose(1, 2).reshape(batch_size, -1, self.all_head_size)
        return context_layer, None


def patch_attention(model: torch.nn.Module, state: PruningState) -> None:
    """Swap every self-attention module's class for its pruned subclass, all sharing ``state``."""
    for module in model.modules():
        if not isinstance(module, YolosSelfAttention):
            continue
        if not isinstance(module, PrunedSelfAttentionMixin):
            base = module.__class__
            if base not in _PATCHED_ATTENTION_CLASSES:
                _PATCHED_ATTENTION_CLASSES[base] = type(f"Pruned{base.__name__}", (PrunedSelfAttentionMixin, base), {})
            module.__class__ = _PATCHED_ATTENTION_CLASSES[base]
        module._bavit_info = state


class PrunedYolosMixin:
    """Mixed in front of ``YolosForObjectDetection`` (or a subclass) by :func:`patch_yolos`."""

    pruned_batch_mode: str = DEFAULT_BATCH_MODE

    def forward(
        self,
        pixel_values: torch.Tensor,
        keep_mask=None,
        labels: Optional[list[dict]] = None,
        output_full_hidden_state: bool = False,
        batch_mode: Optional[str] = None,
        **kwargs,
    ):
        """YOLOS forward on the kept patch tokens.

        Args:
            pixel_values: ``[B, 3, H, W]`` normalised pixels (512x512 here).
            keep_mask: ``bool [B, H/16, W/16]`` (True = compute the patch) or None for the unmodified dense model.
            labels: DETR-style targets; the loss is transformers' own (``model.loss_function``).
            output_full_hidden_state: return ``last_hidden_state`` as ``[B, 1 + N + 100, D]`` with zeros at
                pruned positions.
            batch_mode: ``"per_image"`` or ``"padded"`` for batches with different kept counts (default
                ``self.pruned_batch_mode``).
        Returns:
            :class:`PrunedYolosOutput` (logits ``[B, 100, C + 1]``, pred_boxes ``[B, 100, 4]`` cxcywh in [0, 1]).
        """
        if keep_mask is None:
            return super().forward(pixel_values, labels=labels, **kwargs)
        unsupported = sorted(k for k, v in kwargs.items() if v)
        if unsupported:
            raise ValueError(f"pruned YOLOS does not support {unsupported}; pass keep_mask=None for the dense model")
        return self._pruned_forward(pixel_values, keep_mask, labels, output_full_hidden_state, batch_mode)

    def _encode(self, hidden: torch.Tensor, mid_pos: Optional[torch.Tensor], key_mask: Optional[torch.Tensor]):
        """Every encoder layer on ``hidden [B, S', D]`` (+ gathered mid position embeddings ``[L-1, B, S', D]``).

        ``key_mask`` (``bool [B, 1, 1, S']``, True = attend, or None) reaches the patched self-attention modules
        through the patch's thread-local state, set for the duration of the layers in this thread only.
        """
        state = self._bavit_info
        state.key_mask = key_mask
        try:
            return self._layers(hidden, mid_pos)
        finally:
            state.key_mask = None

    def _layers(self, hidden: torch.Tensor, mid_pos: Optional[torch.Tensor]) -> torch.Tensor:
        """transformers' encoder loop (and final layer norm) on a gathered sequence ``[B, S', D]``."""
        layers = self.vit.encoder.layer
        for depth, layer in enumerate(layers):
            hidden = layer(hidden)
            if mid_pos is not None and depth < len(layers) - 1:
                hidden = hidden + mid_pos[depth]
        return self.vit.layernorm(hidden)

    def _heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' heads on the last ``num_detection_tokens`` tokens: ``logits``, ``pred_boxes`` (cxcywh)."""
        detection = hidden[:, -self.config.num_detection_tokens:]
        return self.class_labels_classifier(detection), self.bbox_predictor(detection).sigmoid()

    def forward_kept(self, pixel_values: torch.Tensor, keep_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for one image ``[1, 3, H, W]`` with its kept patches as ascending row-major indices
        ``int64 [K]``, so that ``K`` is an input shape (what :mod:`bavit.deploy.export` traces).

        Returns:
            ``logits [1, 100, C + 1]`` and ``pred_boxes [1, 100, 4]``.
        """
        num_det = self.config.num_detection_tokens
        embeddings = self.vit.embeddings(pixel_values)  # [1, 1 + N + det, D], position embeddings added
        total = embeddings.shape[1]
        index = torch.cat([keep_index.new_zeros(1), keep_index + 1,
                           torch.arange(total - num_det, total, device=keep_index.device)])
        mid_pos = None
        if self.config.use_mid_position_embeddings:
            encoder = self.vit.encoder
            mid = encoder.interpolation(encoder.mid_position_embeddings, tuple(pixel_values.shape[-2:]))[:, 0]
            mid_pos = mid.index_select(1, index)[:, None]  # [L-1, 1, S', D]
        return self._heads(self._layers(embeddings.index_select(1, index), mid_pos))

    def _pruned_forward(self, pixel_values, keep_mask, labels, output_full_hidden_state, batch_mode):
        # Copied from transformers.models.yolos.modeling_yolos.YolosModel/YolosForObjectDetection.forward,
        # with modifications: tokens are gathered by keep_mask before the encoder.
        config = self.config
        if labels is not None and config.auxiliary_loss:
            raise ConfigError("pruned YOLOS does not support auxiliary_loss=True (transformers' YOLOS loss "
                              "expects decoder layers for it); set config.auxiliary_loss = False")
        batch, _, height, width = pixel_values.shape
        patch = config.patch_size
        grid = (height // patch, width // patch)
        num_patches, num_det = grid[0] * grid[1], config.num_detection_tokens
        keep = check_keep_mask(keep_mask, batch, grid, pixel_values.device)
        counts = keep.sum(1)

        embeddings = self.vit.embeddings(pixel_values)  # [B, 1 + N + det, D], position embeddings added
        mid_dense = None
        if config.use_mid_position_embeddings:
            encoder = self.vit.encoder
            mid_dense = encoder.interpolation(encoder.mid_position_embeddings, (height, width))[:, 0]  # [L-1, S, D]

        mode = batch_mode or self.pruned_batch_mode
        if mode not in BATCH_MODES:
            raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {mode!r}")
        same_count = bool((counts == counts[0]).all())
        if same_count or mode == "padded":
            chunks = [torch.arange(batch, device=keep.device)]
        else:
            chunks = [torch.tensor([b], device=keep.device) for b in range(batch)]

        index, valid = sequence_index(keep, num_patches, num_det)
        outputs = []
        for rows in chunks:
            length = 1 + int(counts[rows].max()) + num_det
            row_index = torch.cat([index[rows, : length - num_det], index[rows, -num_det:]], dim=1)
            row_valid = torch.cat([valid[rows, : length - num_det], valid[rows, -num_det:]], dim=1)
            tokens = gather_tokens(embeddings[rows], row_index)
            mid_pos = None
            if mid_dense is not None:
                mid_pos = torch.stack([gather_tokens(level[None], row_index) for level in mid_dense])
            key_mask = None
            if not bool(row_valid.all()):
                tokens = tokens * row_valid[..., None]
                key_mask = row_valid[:, None, None, :]  # [b, 1, 1, S'] True = attend
            outputs.append((rows, length, self._encode(tokens, mid_pos, key_mask)))
        if len(outputs) == 1:
            hidden = outputs[0][2]
        else:
            hidden = embeddings.new_zeros(batch, index.shape[1], embeddings.shape[-1])
            for rows, length, encoded in outputs:
                hidden[rows, : length - num_det] = encoded[:, : length - num_det]
                hidden[rows, -num_det:] = encoded[:, -num_det:]
        hidden = hidden * valid[..., None]  # zero pads

        logits, pred_boxes = self._heads(hidden)
        loss = loss_dict = None
        if labels is not None:
            loss, loss_dict, _ = self.loss_function(logits, labels, self.device, pred_boxes, config, None, None)

        if output_full_hidden_state:
            full = hidden.new_zeros(batch, 1 + num_patches + num_det, hidden.shape[-1])
            full.scatter_(1, torch.where(valid, index, 0)[..., None].expand_as(hidden), hidden)
            full[:, 0] = hidden[:, 0]  # pads scattered zeros onto CLS; put CLS back
            hidden = full
        return PrunedYolosOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            last_hidden_state=hidden,
            kept_patches=counts,
        )

    def save_pretrained(self, *args, **kwargs):
        """Save as a plain ``YolosForObjectDetection`` (config ``architectures`` names the transformers class)."""
        patched = self.__class__
        self.__class__ = patched.__bases__[1]
        try:
            return self.save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = patched


_PATCHED_CLASSES: dict[type, type] = {}


def patch_yolos(model: YolosForObjectDetection, batch_mode: str = DEFAULT_BATCH_MODE) -> YolosForObjectDetection:
    """Make ``model`` accept ``keep_mask`` (in place; idempotent). Returns the same object.

    Raises:
        TypeError: ``model`` is not a ``YolosForObjectDetection``.
        ValueError: unknown ``batch_mode``.
    """
    if batch_mode not in BATCH_MODES:
        raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {batch_mode!r}")
    if not isinstance(model, YolosForObjectDetection):
        raise TypeError(
            f"patch_yolos needs a transformers YolosForObjectDetection, got {type(model).__name__}"
        )
    if not isinstance(model, PrunedYolosMixin):
        base = model.__class__
        if base not in _PATCHED_CLASSES:
            _PATCHED_CLASSES[base] = type(f"Pruned{base.__name__}", (PrunedYolosMixin, base), {})
        model.__class__ = _PATCHED_CLASSES[base]
    state = model.__dict__.get("_bavit_info")
    if not isinstance(state, PruningState):
        state = model._bavit_info = PruningState()
    patch_attention(model, state)  # also picks up attention modules replaced since the last patch
    model.pruned_batch_mode = batch_mode
    return model


__all__ = ["patch_yolos", "PrunedYolosMixin", "BATCH_MODES", "PrunedYolosOutput", "check_keep_mask", "sequence_index",
           "gather_tokens", "PruningState", "PrunedSelfAttentionMixin", "patch_attention"]
