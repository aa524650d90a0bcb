"""The trainer's shared steps and the split between training and windowing settings."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from moe.training import TrainConfig, WindowConfig
from moe.training.results import EpochMetrics
from moe.training.steps import KeepBest, absolute_errors, random_split, split_by_mask


def test_windowing_settings_live_apart_from_training() -> None:
    """Guards issue 12: TrainConfig holds no windowing; WindowConfig keeps the seed path's
    defaults (rolling, stride = pred_length, 64 per series); old keys name their new home."""
    assert WindowConfig().model_dump() == {
        "windowing": "rolling",
        "stride": None,
        "max_windows_per_series": 64,
        "min_context": None,  # the smaller of 36 and input_length, resolved by the caller
    }
    fields = set(TrainConfig.model_fields)
    assert not fields & {"windowing", "stride", "max_windows_per_series", "expert_batch_size"}
    with pytest.raises(ValidationError, match=r"max_windows_per_series -> WindowConfig"):
        TrainConfig(max_windows_per_series=6)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match=r"expert_batch_size -> ExpertConfig.batch_size"):
        TrainConfig.model_validate({"epochs": 2, "expert_batch_size": 32})
    with pytest.raises(ValidationError):
        WindowConfig(max_windows_per_series=0)


def test_keep_best_keeps_the_first_lowest_epoch_and_nothing_when_disabled() -> None:
    """Guards the one best-epoch keeper both trainers use: strict improvement (a tie keeps
    the earlier epoch), epochs without validation are ignored, disabled keeps nothing."""
    gate = nn.Linear(2, 1)
    keep = KeepBest(enabled=True)
    for epoch, (val_mae, weight) in enumerate([(0.5, 1.0), (0.3, 2.0), (0.3, 3.0), (None, 4.0)]):
        with torch.no_grad():
            gate.weight.fill_(weight)
        keep.offer(EpochMetrics(epoch, 1.0, val_mae, val_mae, None), gate)
    assert keep.restore(gate) == 1
    assert torch.equal(gate.weight, torch.full((1, 2), 2.0))
    off = KeepBest(enabled=False)
    off.offer(EpochMetrics(0, 1.0, 0.1, 0.1, None), gate)
    assert off.restore(gate) is None and torch.equal(gate.weight, torch.full((1, 2), 2.0))


def test_absolute_errors_pool_points_or_average_windows() -> None:
    """Guards the one per-expert validation MAE: pooled over observed points (linear and
    contextual gates) or each window's own mean (feature-pair gate); missing points left out."""
    target = torch.tensor([[1.0, 0.0], [2.0, 4.0]])  # (n=2, H=2), first row's 2nd point missing
    observed = torch.tensor([[True, False], [True, True]])
    forecasts = torch.tensor([[[2.0, 9.0]], [[2.0, 1.0]]])  # (n, K=1, H): errors 1 | 0, 3
    pooled = absolute_errors(forecasts, target, observed, per_window=False)
    torch.testing.assert_close(pooled, torch.tensor([4.0 / 3]))
    per_window = absolute_errors(forecasts, target, observed, per_window=True)
    torch.testing.assert_close(per_window, torch.tensor([[1.0], [1.5]]))
    nothing = absolute_errors(forecasts, target, torch.zeros_like(observed), per_window=True)
    torch.testing.assert_close(nothing, torch.zeros(2, 1))


def test_splits_by_mask_or_seeded_fraction() -> None:
    """Guards the split step: an explicit mask is honoured (and checked); the random split
    holds out at least one window when it can and never all of them."""
    train, val = split_by_mask(4, torch.tensor([False, True, False, True]))
    assert train.tolist() == [0, 2] and val.tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"validation_mask must have shape \(4,\)"):
        split_by_mask(4, torch.tensor([True, False]))
    train, val = random_split(3, 0.01, torch.Generator().manual_seed(0))
    assert val.numel() == 1 and sorted(train.tolist() + val.tolist()) == [0, 1, 2]
    train, val = random_split(1, 0.5, torch.Generator().manual_seed(0))
    assert train.tolist() == [0] and val.numel() == 0
