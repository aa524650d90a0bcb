"""Point and probabilistic forecast errors, per window, NaN-aware (NumPy; no IO).

Shapes: ``target`` and ``forecast`` ``(N, H)``; ``context`` ``(N, L)`` (for MASE's scale);
``quantiles`` ``(N, H, Q)`` at ``levels`` ``(Q,)``. NaN in the target marks a missing actual
and is left out. Every function returns one value per window ``(N,)``; aggregate with
``np.nanmean`` (the M-competition convention: the mean of per-series scores).

Definitions:
* MASE: mean |y - f| / mean |y_t - y_{t-m}| over the context (seasonal naive in-sample
  error, ``m = season_length``; falls back to m = 1 when the context is shorter than m + 1).
  ``season_length`` is one int for every window or ``(N,)`` ints, one per window (a store
  mixes monthly, daily, ... series; see ``moe.seasonality``).
* sMAPE: 200 * mean |y - f| / (|y| + |f|) (percent, as in M3/M4).
* MAPE: 100 * mean |y - f| / |y| (actuals equal to zero are left out).
* RMSE: sqrt(mean (y - f)^2).
* WQL: 2 * sum_q sum_h pinball_q(y, f_q) / (Q * sum_h |y|), the weighted quantile loss
  used as a CRPS approximation (levels with NaN quantiles are left out).
* coverage_90: share of observed actuals inside [q05, q95] (NaN without both levels).
* width_90: mean (q95 - q05) over the window, in MASE's scale (comparable across series).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "SeasonLength",
    "mase",
    "smape",
    "mape",
    "rmse",
    "wql",
    "naive_scale",
    "positive_scale",
    "interval_coverage",
    "interval_width",
    "all_metrics",
]


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(values)
    counts = valid.sum(axis=1)
    sums = np.where(valid, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


SeasonLength = int | np.ndarray


def _scale_one_lag(context: np.ndarray, season_length: int) -> np.ndarray:
    lag = season_length if context.shape[1] > season_length else 1
    if context.shape[1] <= lag:
        return np.full(context.shape[0], np.nan)
    diffs = np.abs(context[:, lag:] - context[:, :-lag])
    return _nanmean_rows(diffs)


def naive_scale(context: np.ndarray, season_length: SeasonLength = 1) -> np.ndarray:
    """Mean absolute seasonal-naive error inside each context ``(N, L)`` -> ``(N,)``.

    ``season_length``: an int for every row or ``(N,)`` ints, one per row.
    """
    context = np.asarray(context, np.float64)
    if np.ndim(season_length) == 0:
        return _scale_one_lag(context, int(season_length))
    seasons = np.asarray(season_length, np.int64)
    if seasons.shape != (context.shape[0],):
        raise ValueError(
            f"season_length must be an int or have shape ({context.shape[0]},), "
            f"got shape {seasons.shape}"
        )
    if (seasons < 1).any():
        raise ValueError(f"season lengths must be >= 1, got min {int(seasons.min())}")
    scale = np.empty(context.shape[0])
    for lag in np.unique(seasons):  # one vectorised pass per distinct season length
        rows = seasons == lag
        scale[rows] = _scale_one_lag(context[rows], int(lag))
    return scale


def positive_scale(context: np.ndarray, season_length: SeasonLength = 1) -> np.ndarray:
    """``naive_scale`` made safe to divide by: ``(N, L)`` -> ``(N,)``, positive and finite.

    The one MASE scale with fallbacks, for losses and interval units (a metric keeps the
    plain ``naive_scale`` and leaves undefined rows out): where the seasonal-naive MAE is
    not a positive number, the lag-1 naive MAE; then the mean |value|; then 1.
    """
    context = np.asarray(context, np.float64)
    scale = naive_scale(context, season_length)
    for fallback in (lambda: naive_scale(context, 1), lambda: _nanmean_rows(np.abs(context))):
        bad = ~(np.isfinite(scale) & (scale > 0))
        if not bad.any():
            return scale
        scale = np.where(bad, fallback(), scale)
    return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def mase(
    target: np.ndarray,
    forecast: np.ndarray,
    context: np.ndarray,
    season_length: SeasonLength = 1,
) -> np.ndarray:
    scale = naive_scale(context, season_length)
    errors = _nanmean_rows(np.abs(np.asarray(target, np.float64) - forecast))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, errors / scale, np.nan)


def smape(target: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    target = np.asarray(target, np.float64)
    denominator = np.abs(target) + np.abs(forecast)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(denominator > 0, np.abs(target - forecast) / denominator, 0.0)
    ratio = np.where(np.isnan(target), np.nan, ratio)
    return 200.0 * _nanmean_rows(ratio)


def mape(target: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    target = np.asarray(target, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(target != 0, np.abs(target - forecast) / np.abs(target), np.nan)
    return 100.0 * _nanmean_rows(ratio)


def rmse(target: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    return np.sqrt(_nanmean_rows((np.asarray(target, np.float64) - forecast) ** 2))


def wql(target: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Weighted quantile loss per window; NaN when no quantile level is available."""
    target = np.asarray(target, np.float64)[:, :, None]  # (N, H, 1)
    q = np.asarray(levels, np.float64)[None, None, :]  # (1, 1, Q)
    diff = target - quantiles  # (N, H, Q)
    pinball = np.maximum(q * diff, (q - 1.0) * diff)
    available = ~np.isnan(quantiles).all(axis=(0, 1))  # levels the model produced
    if not available.any():
        return np.full(target.shape[0], np.nan)
    pinball = pinball[:, :, available]
    observed = ~np.isnan(target[:, :, 0])
    loss = np.where(observed[:, :, None], pinball, 0.0).sum(axis=(1, 2)) / available.sum()
    weight = np.where(observed, np.abs(target[:, :, 0]), 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, 2.0 * loss / weight, np.nan)


def interval_coverage(target: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Share of observed ``target`` points in ``[lower, upper]``, per window; all ``(N, H)``."""
    target = np.asarray(target, np.float64)
    valid = ~np.isnan(target) & ~np.isnan(lower) & ~np.isnan(upper)
    inside = np.where(valid, (target >= lower) & (target <= upper), np.nan)
    return _nanmean_rows(inside.astype(np.float64))


def interval_width(
    lower: np.ndarray, upper: np.ndarray, context: np.ndarray, season_length: SeasonLength = 1
) -> np.ndarray:
    """Mean ``upper - lower`` per window in MASE's scale (``naive_scale``); ``(N,)``."""
    scale = naive_scale(context, season_length)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, _nanmean_rows(upper - lower) / scale, np.nan)


def all_metrics(
    target: np.ndarray,
    forecast: np.ndarray,
    context: np.ndarray,
    quantiles: np.ndarray | None = None,
    levels: Sequence[float] = (),
    season_length: SeasonLength = 1,
) -> dict[str, np.ndarray]:
    """Every metric per window: ``{"mase", "smape", "mape", "rmse", "wql", "coverage_90",
    "width_90"}`` -> ``(N,)`` (the interval metrics need levels 0.05 and 0.95)."""
    n = target.shape[0]
    nothing = np.full(n, np.nan)
    coverage, width = nothing, nothing
    if quantiles is not None and 0.05 in levels and 0.95 in levels:
        lower = quantiles[:, :, list(levels).index(0.05)]
        upper = quantiles[:, :, list(levels).index(0.95)]
        coverage = interval_coverage(target, lower, upper)
        width = interval_width(lower, upper, context, season_length)
    return {
        "mase": mase(target, forecast, context, season_length),
        "smape": smape(target, forecast),
        "mape": mape(target, forecast),
        "rmse": rmse(target, forecast),
        "wql": wql(target, quantiles, levels) if quantiles is not None else np.full(n, np.nan),
        "coverage_90": coverage,
        "width_90": width,
    }
