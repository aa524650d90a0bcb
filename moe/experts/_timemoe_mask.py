"""The causal attention mask that sktime's Time-MoE architecture needs, built here.

sktime's ``TimeMoeModel.forward`` turns the caller's 2-D padding mask into the 4-D additive
mask of its eager attention through ``_prepare_4d_causal_attention_mask``, a private
transformers helper it imports into its module at import time. transformers 5.24 removed
``transformers.modeling_attn_mask_utils``; sktime's guarded import then leaves a stub that
takes no arguments, and every forward call raises ``TypeError``. Private helpers can vanish
in any release, so the adapter does not use it at all: ``install`` rebinds that one module
global (used at one call site, inside ``TimeMoeModel.forward``) to ``causal_attention_mask``
below, which builds the same mask from the documented semantics. The result no longer
depends on which transformers 5.x is installed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import nn

__all__ = ["HELPER_NAME", "causal_attention_mask", "install"]

#: The module-level name sktime's Time-MoE calls to build its 4-D attention mask.
HELPER_NAME = "_prepare_4d_causal_attention_mask"


def causal_attention_mask(
    attention_mask: torch.Tensor | None,
    input_shape: tuple[int, int],
    inputs_embeds: torch.Tensor,
    past_key_values_length: int,
    sliding_window: int | None = None,
) -> torch.Tensor | None:
    """Additive causal + padding mask for eager attention (same signature as the helper).

    Args:
        attention_mask: ``(B, P + T)`` with 1 = attend, 0 = padding, or ``None`` (no padding).
        input_shape: ``(B, T)``, the batch size and the number of new query positions.
        inputs_embeds: ``(B, T, D)``; only its dtype and device are used.
        past_key_values_length: ``P``, positions already in a key/value cache (0 without one).
        sliding_window: Not supported by Time-MoE's configs; must be ``None``.

    Returns:
        ``(B, 1, T, P + T)`` in ``inputs_embeds.dtype``: 0 where query ``i`` may attend key
        ``j`` (``j <= P + i`` and key ``j`` is not padding), the dtype's most negative finite
        value elsewhere; ``None`` for one query position without padding (nothing to mask).
    """
    if sliding_window is not None:
        raise ValueError(
            f"timemoe: sliding-window attention is not supported, got {sliding_window}"
        )
    batch, length = input_shape
    total = past_key_values_length + length
    if attention_mask is None and length == 1:
        return None
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    query = torch.arange(past_key_values_length, total, device=device)  # (T,)
    key = torch.arange(total, device=device)  # (P + T,)
    blocked = (key[None, :] > query[:, None]).expand(batch, 1, length, total)  # future keys
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (batch, total):
            raise ValueError(
                f"timemoe: attention_mask must be (batch, past + length) = {(batch, total)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        padding = (attention_mask == 0).to(device)[:, None, None, :]  # (B, 1, 1, P + T)
        blocked = blocked | padding
    mask = torch.zeros((batch, 1, length, total), dtype=dtype, device=device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)


def install(model: nn.Module) -> None:
    """Make the architecture module of ``model`` build its mask with ``causal_attention_mask``.

    Idempotent. Raises ``RuntimeError`` when the module has no such name, i.e. an sktime
    release whose Time-MoE no longer builds its mask this way (then this adapter needs a
    look, rather than silently running a model whose attention may be unmasked).
    """
    architecture = sys.modules[type(model).__module__]
    if not hasattr(architecture, HELPER_NAME):
        raise RuntimeError(
            f"timemoe: {architecture.__name__} has no {HELPER_NAME}; this sktime version's "
            "Time-MoE layout is not supported (tested with sktime 1.2)"
        )
    setattr(architecture, HELPER_NAME, causal_attention_mask)
