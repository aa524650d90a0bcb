"""Series features of the feature-pair gate (moe.features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe.features import FEATURE_NAMES, series_features, series_features_numpy


def _column(name: str) -> int:
    return FEATURE_NAMES.index(name)


def _windows() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(120)
    seasonal = 100 + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, 120)
    trending = 100 + 2 * t + rng.normal(0, 1, 120)
    noise = rng.normal(50, 10, 120)
    return np.stack([seasonal, trending, noise])


def test_features_see_seasonality_and_trend() -> None:
    """Guards the decomposition: seasonal series score high seasonality, trending ones trend."""
    features = series_features_numpy(_windows(), 12)
    seasonal, trend = _column("seasonal_strength"), _column("trend_strength")
    assert features[0, seasonal] > 0.9 and features[1, seasonal] < 0.3
    assert features[1, trend] > 0.9 and features[0, trend] < 0.5
    assert features[2, seasonal] < 0.4 and features[2, trend] < 0.4


def test_features_are_scale_free_and_finite() -> None:
    """Guards scale invariance: multiplying a window by 1e4 leaves every feature unchanged."""
    windows = _windows()
    assert np.allclose(series_features_numpy(windows, 12), series_features_numpy(1e4 * windows, 12))
    flat = np.full((1, 40), 7.0)
    empty = np.full((1, 40), np.nan)
    out = series_features_numpy(np.concatenate([flat, empty]), 12)
    assert np.isfinite(out).all() and out.shape == (2, len(FEATURE_NAMES))


def test_padding_and_gaps_are_handled() -> None:
    """Guards NaN handling: left padding shortens the length feature; inner gaps are counted."""
    windows = _windows()
    padded = windows[:1].copy()
    padded[0, :60] = np.nan
    gappy = windows[:1].copy()
    gappy[0, 50:55] = np.nan
    out = series_features_numpy(np.concatenate([windows[:1], padded, gappy]), 12)
    length, frac, inside = (
        _column("log_length"),
        _column("observed_frac"),
        _column("missing_inside"),
    )
    assert out[1, length] == pytest.approx(np.log(60)) and out[1, frac] == pytest.approx(0.5)
    assert out[2, inside] == pytest.approx(5 / 120) and out[0, inside] == 0


def test_per_window_season_and_torch_wrapper() -> None:
    """Guards per-window seasons (one call per season agrees) and the torch wrapper."""
    windows = _windows()
    seasons = np.array([12, 4, 1])
    together = series_features_numpy(windows, seasons)
    for row, season in enumerate(seasons):
        assert np.allclose(together[row], series_features_numpy(windows[row : row + 1], season)[0])
    tensor = series_features(torch.from_numpy(windows).float(), torch.from_numpy(seasons))
    assert tensor.dtype == torch.float32
    assert np.allclose(tensor.numpy(), series_features_numpy(windows.astype(np.float32), seasons))
    with pytest.raises(ValueError, match="season_length"):
        series_features_numpy(windows, 0)
