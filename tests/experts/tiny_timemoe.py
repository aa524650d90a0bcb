"""A tiny randomly initialised Time-MoE, saved and loaded through the real checkpoint path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from moe.experts.base import ExpertConfig
from moe.experts.timemoe import build

if TYPE_CHECKING:
    from sktime.libs.timemoe import TimeMoeForPrediction

    from moe.experts.timemoe import TimeMoEForecaster

__all__ = ["TINY_CONFIG", "make_tiny", "tiny_model"]

#: Real architecture, toy sizes: heads 1/2/4 (native horizon 4), context capped at 64.
TINY_CONFIG: dict[str, object] = {
    "input_size": 1,
    "hidden_size": 16,
    "intermediate_size": 32,
    "horizon_lengths": [1, 2, 4],
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 64,
    "initializer_range": 0.3,  # larger than 0.02 so forecasts depend visibly on the input
}


def tiny_model(seed: int = 0) -> TimeMoeForPrediction:
    """The tiny model, initialised from ``torch.manual_seed(seed)`` (same seed, same weights)."""
    from sktime.libs.timemoe import TimeMoeConfig, TimeMoeForPrediction

    torch.manual_seed(seed)
    return TimeMoeForPrediction(TimeMoeConfig(**TINY_CONFIG)).eval()


def make_tiny(directory: Path, **config: object) -> TimeMoEForecaster:
    """Save ``tiny_model()`` into ``directory`` and load it back with ``build()`` offline.

    Extra keyword arguments go to ``ExpertConfig`` (e.g. ``batch_size=2``).
    """
    directory = Path(directory)
    tiny_model().save_pretrained(directory)
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return build(ExpertConfig(checkpoint=str(directory), **config))  # type: ignore[arg-type]
    finally:
        if previous is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
