"""The self-attention side of the pruned YOLOS patch (:mod:`bavit.pruning.yolos`), as ToMe's ``_tome_info``: every
``YolosSelfAttention`` module of a patched model gets a subclass that reads the padding key mask of a padded batch
from one small per-thread state object the patch owns, so no mask travels through transformers' layer signatures."""
from __future__ import annotations

import threading
from typing import Optional

import torch
from transformers.models.yolos.modeling_yolos import YolosSelfAttention

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


__all__ = ["PruningState", "PrunedSelfAttentionMixin", "patch_attention"]
