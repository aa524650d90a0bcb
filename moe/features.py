"""Cheap, scale-free features of one context window each, for the feature-pair gate.

Computed from the raw context alone (no expert runs), so a gate that routes on them stays
sparse at inference. Every feature is invariant to multiplying the window by a positive
constant (levels are divided by the window's spread), so one gate serves every scale.

Shapes: ``context`` ``(N, L)`` float, NaN = missing (left padding of short series or gaps);
``season_length`` an int or ``(N,)`` ints; result ``(N, F)`` float32 with
``F = len(FEATURE_NAMES)``, no NaN (a feature that cannot be computed, e.g. seasonality of a
window shorter than two seasons, is 0, and ``observed_frac`` / ``log_length`` say why).

The definitions follow the usual series-feature sets (tsfeatures / FFORMA) in spirit, each
simplified to a few NumPy lines:

* ``log_length``: log of the observed points (the span from the first to the last
  observation); ``observed_frac``: their share of ``L``; ``missing_inside``: share of gaps
  inside that span (filled by carrying the last value forward for the other features).
* ``trend_strength`` and ``seasonal_strength``: ``max(0, 1 - var(R) / var(R + T))`` and
  ``max(0, 1 - var(R) / var(R + S))`` for a classical additive decomposition (a centred
  moving average of one season as the trend ``T``, phase means of the detrended series as
  ``S``, remainder ``R``).
* ``slope``: least-squares slope over the observed span, in spreads per season.
* ``spikiness``: ``max |R| / std(R)``; ``lumpiness``: variance of the remainder's
  per-season variances over their mean squared; ``stability``: variance of the per-season
  means of the standardised series.
* ``acf1``, ``acf_season``: autocorrelation at lags 1 and ``m``; ``diff_acf1``,
  ``diff_acf_season``: the same for the first differences.
* ``level_shift``: largest change between consecutive one-season means, in spreads;
  ``variance_shift``: largest |log ratio| between consecutive one-season variances.
* ``last_change``: mean of the last season minus the mean of the season before, in spreads.
* ``cv``: std over mean |value|; ``zero_frac``: share of zeros; ``nonpositive``: 1 when any
  value is <= 0.
* ``naive_ratio``: log of the in-window naive (lag 1) over seasonal-naive (lag m) mean
  absolute error: above 0 when last season predicts better than last month.
* ``backcast_snaive``, ``backcast_naive``, ``backcast_drift``: log of the error of each
  cheap method forecasting the window's own last season from what precedes it, in units
  of the window's seasonal-naive scale (a tiny in-context backtest).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FEATURE_NAMES", "series_features", "series_features_numpy"]

FEATURE_NAMES: tuple[str, ...] = (
    "log_length",
    "observed_frac",
    "missing_inside",
    "trend_strength",
    "seasonal_strength",
    "slope",
    "spikiness",
    "lumpiness",
    "stability",
    "acf1",
    "acf_season",
    "diff_acf1",
    "diff_acf_season",
    "level_shift",
    "variance_shift",
    "last_change",
    "cv",
    "zero_frac",
    "nonpositive",
    "naive_ratio",
    "backcast_snaive",
    "backcast_naive",
    "backcast_drift",
)
_EPS = 1e-8
_CLIP = 10.0  # features are clipped to +-_CLIP: a flat window must not produce 1e8


def _acf(values: np.ndarray, lag: int) -> float:
    if lag < 1 or values.size <= lag + 1:
        return 0.0
    centred = values - values.mean()
    denominator = float((centred * centred).sum())
    if denominator <= _EPS:
        return 0.0
    return float((centred[lag:] * centred[:-lag]).sum() / denominator)


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of ``width`` points (2 x m MA for even m); edges hold the
    nearest full average so the trend has the series' length."""
    n = values.size
    if width < 2 or n < width + 1:
        return np.full(n, values.mean())
    if width % 2 == 0:
        kernel = np.r_[0.5, np.ones(width - 1), 0.5] / width
    else:
        kernel = np.ones(width) / width
    inner = np.convolve(values, kernel, mode="valid")
    pad_left = (n - inner.size) // 2
    pad_right = n - inner.size - pad_left
    return np.r_[np.full(pad_left, inner[0]), inner, np.full(pad_right, inner[-1])]


def _block_stats(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Means and variances of consecutive non-overlapping blocks of ``width``, from the end."""
    blocks = values.size // width
    if blocks < 1 or width < 1:
        return np.empty(0), np.empty(0)
    tail = values[values.size - blocks * width :].reshape(blocks, width)
    return tail.mean(axis=1), tail.var(axis=1)


def _log_ratio(numerator: float, denominator: float) -> float:
    return float(np.log((numerator + _EPS) / (denominator + _EPS)))


def _features_one(raw: np.ndarray, season: int) -> np.ndarray:
    """Features of one window ``(L,)`` -> ``(F,)`` (see the module docstring)."""
    out = np.zeros(len(FEATURE_NAMES))
    length = raw.size
    observed = np.flatnonzero(~np.isnan(raw))
    if observed.size == 0:
        return out
    span = raw[observed[0] : observed[-1] + 1].astype(np.float64)
    gaps = np.isnan(span)
    if gaps.any():  # carry the last observation forward
        index = np.where(~gaps, np.arange(span.size), 0)
        np.maximum.accumulate(index, out=index)
        span = span[index]
    n = span.size
    m = max(int(season), 1)
    out[0] = np.log(n)
    out[1] = n / length
    out[2] = gaps.mean()
    mean_abs = float(np.abs(span).mean())
    spread = float(span.std())
    out[16] = spread / (mean_abs + _EPS)
    out[17] = float((span == 0).mean())
    out[18] = float((span <= 0).any())
    if n < 3 or spread <= _EPS * max(mean_abs, 1.0):
        return np.clip(out, -_CLIP, _CLIP)
    z = (span - span.mean()) / spread  # standardised: every feature below is scale-free
    seasonal_window = m if (m > 1 and n >= 2 * m) else 1
    trend = _moving_average(z, seasonal_window) if seasonal_window > 1 else _moving_average(z, 3)
    detrended = z - trend
    if seasonal_window > 1:
        phase = np.arange(n) % m
        phase_means = np.bincount(phase, weights=detrended, minlength=m) / np.maximum(
            np.bincount(phase, minlength=m), 1
        )
        seasonal = phase_means[phase] - phase_means.mean()
    else:
        seasonal = np.zeros(n)
    remainder = z - trend - seasonal
    var_r = float(remainder.var())
    out[3] = max(0.0, 1.0 - var_r / (float((remainder + trend).var()) + _EPS))
    out[4] = max(0.0, 1.0 - var_r / (float((remainder + seasonal).var()) + _EPS))
    t = np.arange(n, dtype=np.float64)
    out[5] = float(np.polyfit(t, z, 1)[0]) * m
    std_r = float(np.sqrt(var_r))
    out[6] = float(np.abs(remainder).max()) / (std_r + _EPS) if std_r > _EPS else 0.0
    block = m if m > 1 else min(12, max(n // 4, 2))
    block_means, block_vars = _block_stats(z, block)
    _, remainder_vars = _block_stats(remainder, block)
    if remainder_vars.size >= 2:
        out[7] = float(remainder_vars.var()) / (float(remainder_vars.mean()) ** 2 + _EPS)
    if block_means.size >= 2:
        out[8] = float(block_means.var())
        out[13] = float(np.abs(np.diff(block_means)).max())
        logs = np.log(block_vars + 1e-6)
        out[14] = float(np.abs(np.diff(logs)).max())
        out[15] = float(block_means[-1] - block_means[-2])
    out[9] = _acf(z, 1)
    out[10] = _acf(z, m) if m > 1 else 0.0
    differences = np.diff(z)
    out[11] = _acf(differences, 1)
    out[12] = _acf(differences, m) if m > 1 else 0.0
    naive_mae = float(np.abs(differences).mean())
    snaive_mae = float(np.abs(z[m:] - z[:-m]).mean()) if n > m else naive_mae
    out[19] = _log_ratio(naive_mae, snaive_mae)
    scale = snaive_mae if snaive_mae > _EPS else max(naive_mae, _EPS)
    pred_length = m if m > 1 else min(6, n // 3)
    if pred_length >= 1 and n - pred_length >= max(m, 2) + 1:
        past, future = z[: n - pred_length], z[n - pred_length :]
        snaive = np.resize(past[-m:], pred_length) if m > 1 else np.full(pred_length, past[-1])
        naive = np.full(pred_length, past[-1])
        drift_slope = (past[-1] - past[0]) / max(past.size - 1, 1)
        drift = past[-1] + drift_slope * np.arange(1, pred_length + 1)
        for position, forecast in ((20, snaive), (21, naive), (22, drift)):
            out[position] = np.log(float(np.abs(future - forecast).mean()) / scale + 1e-3)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=_CLIP, neginf=-_CLIP), -_CLIP, _CLIP)


def series_features_numpy(context: np.ndarray, season_length: int | np.ndarray) -> np.ndarray:
    """``context`` ``(N, L)`` (NaN = missing), season ``int`` or ``(N,)`` -> ``(N, F)`` float32."""
    context = np.asarray(context, dtype=np.float64)
    if context.ndim != 2:
        raise ValueError(f"context must have shape (N, L), got {context.shape}")
    seasons = np.broadcast_to(np.asarray(season_length, dtype=np.int64), (context.shape[0],))
    if (seasons < 1).any():
        raise ValueError(f"season_length must be >= 1, got {sorted(set(seasons.tolist()))}")
    features = np.zeros((context.shape[0], len(FEATURE_NAMES)), np.float32)
    with np.errstate(all="ignore"):
        for row in range(context.shape[0]):
            features[row] = _features_one(context[row], int(seasons[row]))
    return features


def series_features(
    context: torch.Tensor, season_length: int | torch.Tensor | np.ndarray
) -> torch.Tensor:
    """``series_features_numpy`` for tensors: ``(N, L)`` -> ``(N, F)`` on ``context``'s device."""
    seasons = season_length
    if isinstance(seasons, torch.Tensor):
        seasons = seasons.detach().cpu().numpy()
    array = series_features_numpy(context.detach().cpu().numpy(), seasons)
    return torch.from_numpy(array).to(context.device)
