"""The seed path's ``min_context``: short series keep their windows under a long
``input_length`` (as in ``moe retrain``), and ``predict_from_model`` forecasts them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moe.experts.fake import fake_trio
from moe.model_file import load_router
from moe.seed.api import make_windows, predict_from_model, train_and_save, window_min_context
from moe.training import TrainConfig, WindowConfig

L, H, MIN_CONTEXT = 8, 3, 4
LENGTHS = [7, 9, 11, 14, 20, 30]  # 7 = MIN_CONTEXT + H: one padded window


def _sequences() -> list[list[float]]:
    return [[10.0 + i + (t % 4) * (1 + i % 3) for t in range(n)] for i, n in enumerate(LENGTHS)]


def test_default_min_context_follows_moe_retrain() -> None:
    """Guards parity of defaults: the smaller of 36 and L (RetrainConfig's rule); 'seed'
    windowing keeps full windows; a min_context above L is refused."""
    from pipeline.config import RetrainConfig

    for input_length in (12, 36, 120):
        retrain_rule = RetrainConfig(input_length=input_length).window_min_context
        assert window_min_context(WindowConfig(), input_length) == retrain_rule
    assert window_min_context(WindowConfig(windowing="seed"), 120) == 120
    assert window_min_context(WindowConfig(min_context=5), 120) == 5
    with pytest.raises(ValueError, match="min_context must be between 1 and input_length"):
        window_min_context(WindowConfig(min_context=9), 8)


def test_short_series_get_left_padded_windows() -> None:
    """Guards the windows: every series with min_context + H points has windows, contexts
    hold exactly the points before each target, padded with NaN on the left."""
    sequences = _sequences()
    config = WindowConfig(min_context=MIN_CONTEXT)
    windows, _ = make_windows(sequences, [None] * len(sequences), L, H, config)
    full, _ = make_windows(sequences, [None] * len(sequences), L, H, WindowConfig(min_context=L))
    assert set(windows.series_index.tolist()) == set(range(len(LENGTHS)))
    assert set(full.series_index.tolist()) == {2, 3, 4, 5}  # 11+ points: L + H
    assert len(windows) > len(full)
    for row in range(len(windows)):
        series = np.asarray(sequences[windows.series_index[row]], np.float32)
        origin = int(windows.origin[row])
        before = series[max(origin - L, 0) : origin]
        assert len(before) >= MIN_CONTEXT
        context = windows.context[row]
        np.testing.assert_array_equal(context[L - len(before) :], before)
        assert np.isnan(context[: L - len(before)]).all()
        np.testing.assert_array_equal(windows.target[row], series[origin : origin + H])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seed_min_context")
    with open(folder / "short.jsonl", "w") as handle:
        for sequence in _sequences():
            handle.write(json.dumps({"sequence": sequence}) + "\n")
    path = folder / "model.pt"
    train_and_save(
        folder / "short.jsonl",
        L,
        H,
        path,
        experts=fake_trio(),
        config=TrainConfig(epochs=2),
        windows=WindowConfig(min_context=MIN_CONTEXT),
    )
    return path


def test_predict_pads_a_series_the_model_was_trained_for(model: Path) -> None:
    """Guards predict on short series: a series with min_context..L-1 points is forecast from
    its NaN-padded context (== the router on that context); the artifact records why."""
    raw = torch.load(model, weights_only=True)
    assert raw["train_config"]["windows"]["min_context"] == MIN_CONTEXT
    series = [3.0, 5.0, 4.0, 6.0, 7.0]
    forecast = predict_from_model(model, series, L, experts=fake_trio())
    assert forecast.shape == (1, H) and torch.isfinite(forecast).all()
    padded = torch.tensor([float("nan")] * (L - len(series)) + series)[None]
    expected = load_router(model, experts=fake_trio()).route(padded).point
    torch.testing.assert_close(forecast, expected)


def test_predict_refuses_a_series_below_min_context(model: Path) -> None:
    """Guards the floor: fewer points than the recorded min_context is a clear error."""
    with pytest.raises(ValueError, match="series has 3 points; .* at least min_context=4"):
        predict_from_model(model, [1.0, 2.0, 3.0], L, experts=fake_trio())
