"""A tiny randomly initialised TimesFM 2.5, saved and loaded exactly like real weights.

Same transformers classes as ``google/timesfm-2.5-200m-transformers``, shrunk so a forward
pass takes milliseconds: patch 8, native horizon 16, quantile head 48, context 96.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moe.experts.base import Expert, ExpertConfig

if TYPE_CHECKING:
    from transformers import TimesFm2_5ModelForPrediction

__all__ = ["TINY_CONTEXT", "TINY_HORIZON", "TINY_QUANTILE_LEN", "tiny_model", "make_tiny"]

TINY_CONTEXT = 96  # context_length: longer contexts are truncated
TINY_HORIZON = 16  # horizon_length: longer horizons go autoregressive
TINY_QUANTILE_LEN = 48  # output_quantile_len: reach of the continuous quantile head


def tiny_model(seed: int = 0, **overrides: Any) -> TimesFm2_5ModelForPrediction:
    """The tiny ``TimesFm2_5ModelForPrediction`` with weights drawn from ``seed``.

    ``overrides`` replace config fields (e.g. ``force_flip_invariance=False``).
    """
    from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

    config = TimesFm2_5Config(
        patch_length=8,
        context_length=TINY_CONTEXT,
        horizon_length=TINY_HORIZON,
        output_quantile_len=TINY_QUANTILE_LEN,
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=32,
        head_dim=8,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        **overrides,
    )
    torch.manual_seed(seed)
    model = TimesFm2_5ModelForPrediction(config).eval()
    # initializer_range 0.02 makes a near-constant forecaster; larger weights make tests bite
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.3)
    return model


def make_tiny(directory: Path, seed: int = 0, **overrides: Any) -> Expert:
    """Save a tiny random TimesFM 2.5 into ``directory`` and load it through ``build``."""
    from moe.experts.timesfm import build

    tiny_model(seed, **overrides).save_pretrained(directory)
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return build(ExpertConfig(checkpoint=str(directory)))
    finally:
        if previous is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
