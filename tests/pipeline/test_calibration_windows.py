"""Conformal calibration on more windows than the backtest ones (``pipeline.calibration``)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from moe.experts.base import QUANTILE_LEVELS
from moe.experts.fake import FakeForecaster
from moe.router import MoERouter
from pipeline.calibration import CalibrationWindows, cross_fitted_calibration, training_mixture

_RNG = np.random.default_rng(7)


def _windows(n: int, noise: float, first_series: int = 0) -> CalibrationWindows:
    """``n`` one-window series: point 10, quantiles 10 +- 1 per level offset, target noisy."""
    horizon, levels = 3, np.array(QUANTILE_LEVELS)
    point = np.full((n, horizon), 10.0)
    spread = (levels - 0.5) * 2.0  # -0.8 .. 0.8
    quantiles = point[:, :, None] + spread[None, None, :]
    context = np.tile(np.arange(12, dtype=float), (n, 1))  # lag-1 scale 1
    target = point + noise * _RNG.standard_normal((n, horizon))
    series = np.arange(first_series, first_series + n)
    return CalibrationWindows(point, quantiles, target, context, series)


def test_extra_windows_of_the_same_fold_never_calibrate_a_backtest_window() -> None:
    """Reported coverage stays cross-fitted: a backtest window's quantiles depend on the
    other fold's windows (backtest and extra) only, never on windows of its own fold."""
    held = _windows(60, noise=1.0)
    extra = _windows(200, noise=1.0, first_series=0)
    args = (held.point, held.quantiles, held.target, held.context, held.series_index)
    base = cross_fitted_calibration(*args, paired=True, extra=extra)
    odd = extra.series_index % 2 == 1
    rougher = CalibrationWindows(
        extra.point,
        extra.quantiles,
        np.where(odd[:, None], extra.point + 5 * (extra.target - extra.point), extra.target),
        extra.context,
        extra.series_index,
    )
    moved = cross_fitted_calibration(*args, paired=True, extra=rougher)
    even_rows = held.series_index % 2 == 0
    # odd extra windows calibrate the even fold only
    np.testing.assert_array_equal(moved[~even_rows], base[~even_rows])
    assert np.abs(moved[even_rows] - base[even_rows]).max() > 0.1


def test_extra_windows_set_the_factor_when_they_outnumber_the_backtest() -> None:
    """With calm training windows and one rough backtest window per series, the factors
    fitted on both are between the two sets' own factors, nearer the bigger set's."""
    rough, calm = _windows(100, noise=3.0), _windows(400, noise=1.0)
    level = QUANTILE_LEVELS.index(0.95)
    rough_factor = rough.factors(paired=True)[:, level].mean()
    calm_factor = calm.factors(paired=True)[:, level].mean()
    both = rough.plus(calm).factors(paired=True)[:, level].mean()
    assert calm_factor < both < rough_factor
    assert both - calm_factor < rough_factor - both


class _Training(NamedTuple):
    """Inputs of ``training_mixture``: a 3-expert router and cached forecasts of ``n``
    windows with no native quantile levels (every level is filled)."""

    router: MoERouter
    names: list[str]
    context: np.ndarray  # (n, 12)
    target: np.ndarray  # (n, 3)
    points: np.ndarray  # (n, 3, 3)
    quantiles: torch.Tensor  # (n, 3, 3, Q), all NaN


def _training(n: int, seed: int) -> _Training:
    torch.manual_seed(seed)
    names, horizon, length = ["a", "b", "c"], 3, 12
    experts = [
        FakeForecaster(name, factor=f) for name, f in zip(names, (1.0, 0.9, 1.1), strict=True)
    ]
    return _Training(
        MoERouter(length, horizon, "cpu", experts=experts),
        names,
        10 + _RNG.standard_normal((n, length)),
        10 + _RNG.standard_normal((n, horizon)),
        10 + 0.5 * _RNG.standard_normal((n, 3, horizon)),
        torch.full((n, 3, horizon, len(QUANTILE_LEVELS)), float("nan")),
    )


def test_training_windows_are_filled_from_the_other_fold() -> None:
    """Experts' missing levels on training windows come from the other fold's residuals:
    making one fold's targets wilder moves the other fold's quantiles, never its own."""
    t = _training(80, seed=0)
    series = np.arange(80)
    base = training_mixture(t.router, t.names, t.context, t.target, series, t.points, t.quantiles)
    odd = series % 2 == 1
    wild = np.where(odd[:, None], 10 + 8 * (t.target - 10), t.target)
    moved = training_mixture(t.router, t.names, t.context, wild, series, t.points, t.quantiles)
    np.testing.assert_array_equal(moved.point, base.point)
    np.testing.assert_array_equal(moved.quantiles[odd], base.quantiles[odd])
    assert np.abs(moved.quantiles[~odd] - base.quantiles[~odd]).max() > 0.5
    assert np.isfinite(base.quantiles).all()


def test_training_mixture_in_chunks_equals_one_pass_over_a_subset_of_rows() -> None:
    """Chunked filling and routing (bounded memory) gives the one-pass result, and ``rows``
    picks windows without copying the rest."""
    t = _training(50, seed=1)
    series = np.arange(50) // 2
    rows = np.flatnonzero(np.arange(50) % 5 != 0)
    inputs = (t.router, t.names, t.context, t.target, series, t.points, t.quantiles, rows)
    whole = training_mixture(*inputs)
    chunked = training_mixture(*inputs, chunk_rows=7)
    np.testing.assert_allclose(chunked.quantiles, whole.quantiles, rtol=1e-6)
    np.testing.assert_array_equal(chunked.point, whole.point)
    np.testing.assert_array_equal(whole.target, t.target[rows])
    assert whole.quantiles.shape == (rows.size, 3, len(QUANTILE_LEVELS))
