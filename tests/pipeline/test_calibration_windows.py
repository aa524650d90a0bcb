"""Conformal calibration on more windows than the backtest ones (``pipeline.calibration``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moe.artifact import load_artifact
from moe.experts.base import QUANTILE_LEVELS, ExpertForecast
from moe.experts.fake import FakeForecaster
from moe.intervals import IntervalModel
from moe.router import MoERouter
from pipeline.calibration import CalibrationWindows, cross_fitted_calibration, training_mixture
from pipeline.config import RetrainConfig
from pipeline.retrain import retrain
from storage import Store

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


class _PointOnly(FakeForecaster):
    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        return ExpertForecast(point=super().forecast(context, horizon).point, quantiles=None)


def test_retrain_calibrates_on_every_window_when_asked(store: Store, series_file: Path) -> None:
    """``interval_calibration_windows='all'``: the artifact's factors come from the training
    windows too (more calibration windows, other factors), the forecasts keep their points."""
    experts = [_PointOnly("a", factor=1.0), _PointOnly("b", factor=0.9, offset=1.0)]
    experts.append(_PointOnly("c", factor=1.1))
    results = {}
    for windows in ("backtest", "all"):
        config = RetrainConfig(
            jsonl_paths=[str(series_file)],
            experts=["seasonal_naive", "autoets", "autotheta"],
            input_length=24,
            pred_length=6,
            max_windows_per_series=4,
            train={"epochs": 2, "batch_size": 32},  # type: ignore[arg-type]
            interval_calibration_windows=windows,  # type: ignore[arg-type]
        )
        result = retrain(store, config, experts=experts)
        intervals = IntervalModel.from_plain(load_artifact(result.artifact_path).intervals)
        assert intervals is not None
        results[windows] = (result, intervals)
    backtest, everything = results["backtest"][1], results["all"][1]
    assert backtest.n_calibration == 24
    assert everything.n_calibration > 24 * 2  # 24 series, up to 3 training windows each
    assert not np.allclose(backtest.factors, everything.factors)
    scores = [results[w][0].scores.overall()["mixture"]["mase"] for w in ("backtest", "all")]
    assert scores[0] == scores[1]  # intervals only: the points are the same


def test_training_windows_are_filled_from_the_other_fold() -> None:
    """Experts' missing levels on training windows come from the other fold's residuals:
    making one fold's targets wilder moves the other fold's quantiles, never its own."""
    torch.manual_seed(0)
    experts = [FakeForecaster(name, factor=f) for name, f in (("a", 1.0), ("b", 0.9), ("c", 1.1))]
    n, horizon, length = 80, 3, 12
    router = MoERouter(length, horizon, "cpu", experts=experts)
    context = 10 + _RNG.standard_normal((n, length))
    points = 10 + 0.5 * _RNG.standard_normal((n, 3, horizon))
    quantiles = np.full((n, 3, horizon, len(QUANTILE_LEVELS)), np.nan)  # no native levels
    target = 10 + _RNG.standard_normal((n, horizon))
    series = np.arange(n)
    names = ["a", "b", "c"]
    base = training_mixture(router, names, context, target, series, points, quantiles)
    odd = series % 2 == 1
    wild = np.where(odd[:, None], 10 + 8 * (target - 10), target)
    moved = training_mixture(router, names, context, wild, series, points, quantiles)
    np.testing.assert_array_equal(moved.point, base.point)
    np.testing.assert_array_equal(moved.quantiles[odd], base.quantiles[odd])
    assert np.abs(moved.quantiles[~odd] - base.quantiles[~odd]).max() > 0.5
    assert np.isfinite(base.quantiles).all()


def test_training_mixture_in_chunks_equals_one_pass_over_a_subset_of_rows() -> None:
    """Chunked filling and routing (bounded memory) gives the one-pass result, and ``rows``
    picks windows without copying the rest."""
    torch.manual_seed(1)
    experts = [FakeForecaster(name, factor=f) for name, f in (("a", 1.0), ("b", 0.9), ("c", 1.1))]
    n, horizon, length = 50, 3, 12
    router = MoERouter(length, horizon, "cpu", experts=experts)
    context = 10 + _RNG.standard_normal((n, length))
    points = 10 + 0.5 * _RNG.standard_normal((n, 3, horizon))
    quantiles = torch.full((n, 3, horizon, len(QUANTILE_LEVELS)), float("nan"))
    target = 10 + _RNG.standard_normal((n, horizon))
    series, names = np.arange(n) // 2, ["a", "b", "c"]
    rows = np.flatnonzero(np.arange(n) % 5 != 0)
    whole = training_mixture(router, names, context, target, series, points, quantiles, rows)
    chunked = training_mixture(
        router, names, context, target, series, points, quantiles, rows, chunk_rows=7
    )
    np.testing.assert_allclose(chunked.quantiles, whole.quantiles, rtol=1e-6)
    np.testing.assert_array_equal(chunked.point, whole.point)
    np.testing.assert_array_equal(whole.target, target[rows])
    assert whole.quantiles.shape == (rows.size, horizon, len(QUANTILE_LEVELS))
