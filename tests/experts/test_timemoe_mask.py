"""Time-MoE's attention mask is ours, whatever transformers 5.x does with its private helper."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from moe.experts import _timemoe_mask
from moe.experts._timemoe_mask import HELPER_NAME, causal_attention_mask
from moe.experts.base import ExpertConfig
from moe.experts.timemoe import build
from tests.experts.tiny_timemoe import make_tiny

MIN = torch.finfo(torch.float32).min


def _embeds(batch: int, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stand-in for ``inputs_embeds``: only dtype and device matter."""
    return torch.zeros(batch, length, 4, dtype=dtype)


def test_mask_without_padding_is_plain_causal() -> None:
    """Guards causality: query i sees keys 0..i and nothing later."""
    mask = causal_attention_mask(None, (2, 4), _embeds(2, 4), 0)
    assert mask is not None and mask.shape == (2, 1, 4, 4) and mask.dtype == torch.float32
    allowed = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    assert torch.equal(mask[0, 0] == 0, allowed) and torch.equal(mask[1, 0] == 0, allowed)
    assert torch.all(mask[0, 0][~allowed] == MIN)


def test_mask_blocks_left_padding_per_row() -> None:
    """Guards the padding path: a padded key is hidden from every query of its row only."""
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    mask = causal_attention_mask(padding, (2, 5), _embeds(2, 5), 0)
    assert mask is not None
    causal = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    assert torch.equal(mask[1, 0] == 0, causal)
    expected_row0 = causal & torch.tensor([False, False, True, True, True])[None, :]
    assert torch.equal(mask[0, 0] == 0, expected_row0)


def test_mask_with_past_keys_and_single_query() -> None:
    """Guards the cache offset: with P past keys the one new query sees all P + 1 keys."""
    assert causal_attention_mask(None, (3, 1), _embeds(3, 1), 0) is None
    mask = causal_attention_mask(None, (1, 2), _embeds(1, 2), 3)
    assert mask is not None and mask.shape == (1, 1, 2, 5)
    assert torch.equal(mask[0, 0] == 0, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool())


def test_mask_follows_dtype_and_refuses_bad_shapes() -> None:
    """Guards bf16 runs (mask in the model dtype) and a clear error for a mis-shaped mask."""
    mask = causal_attention_mask(None, (1, 3), _embeds(1, 3, torch.bfloat16), 0)
    assert mask is not None and mask.dtype == torch.bfloat16
    assert mask[0, 0, 0, 2] == torch.finfo(torch.bfloat16).min
    with pytest.raises(ValueError, match=r"\(batch, past \+ length\) = \(2, 3\)"):
        causal_attention_mask(torch.ones(2, 4), (2, 3), _embeds(2, 3), 0)
    with pytest.raises(ValueError, match="sliding-window"):
        causal_attention_mask(None, (1, 3), _embeds(1, 3), 0, sliding_window=2)


def test_expert_runs_when_the_transformers_helper_is_a_stub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the transformers 5.24 break: sktime's helper became a no-argument stub."""
    from sktime.libs.timemoe import TimeMoeForPrediction

    architecture = sys.modules[TimeMoeForPrediction.__module__]

    def vanished_helper() -> None:  # what sktime's guarded import leaves behind on 5.24
        raise TypeError("_prepare_4d_causal_attention_mask() takes no arguments")

    monkeypatch.setattr(architecture, HELPER_NAME, vanished_helper)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_tiny(tmp_path)
    expert = build(ExpertConfig(checkpoint=str(tmp_path), batch_size=2))
    assert getattr(architecture, HELPER_NAME) is causal_attention_mask
    context = torch.linspace(1.0, 30.0, 40).reshape(2, 20)
    context[1, :5] = float("nan")  # left padding goes through the padding mask
    point = expert.forecast(context, 6).point
    assert point.shape == (2, 6) and torch.isfinite(point).all()


def test_install_refuses_an_architecture_without_the_call_site() -> None:
    """Guards a future sktime layout: no silent run with an unmasked attention."""

    class Elsewhere(torch.nn.Module):
        pass

    with pytest.raises(RuntimeError, match="not supported"):
        _timemoe_mask.install(Elsewhere())
