"""A tiny randomly initialised Moirai-MoE, saved and loaded the way real weights are.

Same uni2ts classes and mixture head as ``Salesforce/moirai-moe-1.0-R-small`` (patch 16, 32
experts per layer, top-2 routing, 4-component mixture), only narrower and shallower:
d_model 64 (one head), d_ff 32, one layer, ~0.2 M parameters. Nothing here is accurate.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from moe.experts.base import Expert, ExpertConfig
from moe.experts.moirai import build

if TYPE_CHECKING:
    from uni2ts.model.moirai_moe import MoiraiMoEModule

__all__ = ["make_tiny", "tiny_module"]


def tiny_module(seed: int = 0) -> MoiraiMoEModule:
    """A randomly initialised tiny ``MoiraiMoEModule`` (centroids included)."""
    from uni2ts.distribution import (
        LogNormalOutput,
        MixtureOutput,
        NegativeBinomialOutput,
        NormalFixedScaleOutput,
        StudentTOutput,
    )
    from uni2ts.model.moirai_moe import MoiraiMoEModule

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        module = MoiraiMoEModule(
            distr_output=MixtureOutput(
                [
                    StudentTOutput(),
                    NormalFixedScaleOutput(),
                    NegativeBinomialOutput(),
                    LogNormalOutput(),
                ]
            ),
            d_model=64,
            d_ff=32,
            num_layers=1,
            patch_sizes=(16,),
            max_seq_len=512,
            attn_dropout_p=0.0,
            dropout_p=0.0,
        )
        # uni2ts allocates the expert centroids with torch.empty: give them real values
        with torch.no_grad():
            module.encoder.centroid.normal_()
    finally:
        torch.random.set_rng_state(generator_state)
    return module


def make_tiny(directory: Path) -> Expert:
    """Save a tiny random Moirai-MoE into ``directory`` and load it through ``build``."""
    tiny_module().save_pretrained(directory)
    return build(ExpertConfig(checkpoint=str(directory)))
