"""Forecast metrics against hand-computed values."""

from __future__ import annotations

import numpy as np

from moe.metrics import mape, mase, rmse, smape, wql


def test_point_metrics_by_hand() -> None:
    """MASE, sMAPE, MAPE and RMSE match values worked out by hand."""
    context = np.array([[1.0, 2.0, 4.0]])  # naive errors 1, 2 -> scale 1.5
    target = np.array([[4.0, 6.0]])
    forecast = np.array([[5.0, 3.0]])  # errors 1, 3
    assert np.allclose(mase(target, forecast, context), [2.0 / 1.5])
    assert np.allclose(smape(target, forecast), [100 * (1 / 9 + 3 / 9)])
    assert np.allclose(mape(target, forecast), [100 * (1 / 4 + 3 / 6) / 2])
    assert np.allclose(rmse(target, forecast), [np.sqrt((1 + 9) / 2)])


def test_missing_actuals_are_left_out() -> None:
    """A NaN actual does not count; an all-NaN target gives NaN, not zero."""
    context = np.array([[0.0, 1.0], [0.0, 1.0]])
    target = np.array([[2.0, np.nan], [np.nan, np.nan]])
    forecast = np.array([[3.0, 100.0], [1.0, 1.0]])
    assert np.allclose(mase(target, forecast, context)[0], 1.0)
    assert np.isnan(mase(target, forecast, context)[1])


def test_seasonal_mase_scale() -> None:
    """season_length=2 scales by the lag-2 naive error."""
    context = np.array([[1.0, 5.0, 2.0, 7.0]])  # lag-2 errors: 1, 2 -> 1.5
    assert np.allclose(mase(np.array([[3.0]]), np.array([[0.0]]), context, 2), [2.0])


def test_wql_is_zero_for_a_perfect_forecast_and_skips_missing_levels() -> None:
    """WQL is 0 when every quantile equals the actual; NaN levels are ignored."""
    target = np.array([[2.0, 4.0]])
    quantiles = np.stack([target, target, np.full_like(target, np.nan)], axis=-1)
    assert np.allclose(wql(target, quantiles, [0.1, 0.5, 0.9]), [0.0])
    off = quantiles.copy()
    off[..., 1] += 1.0  # median off by one at both steps: pinball 0.5 each
    assert np.allclose(wql(target, off, [0.1, 0.5, 0.9]), [2 * (0.5 + 0.5) / 2 / 6])
