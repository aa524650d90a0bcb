"""The global-trees experiment builds the windows its docstring says, with no look-ahead."""

from __future__ import annotations

import numpy as np

from benchmarks._accuracy_data import BenchSeries
from benchmarks.exp_global_trees import (
    INPUT,
    RECIPES,
    SCALE_POINTS,
    fit_and_forecast,
    last_inputs,
    seasonal_reference,
    training_windows,
)


def test_windows_stay_inside_the_training_part_and_are_scaled() -> None:
    values = np.arange(1.0, 41.0)  # 40 points
    x, y = training_windows([values], horizon=3)
    # origins 12..37: the first input has 12 points, the last target ends at the last point
    assert x.shape == (26, INPUT) and y.shape == (26, 3)
    scale = np.mean(values[:SCALE_POINTS])  # first window: its last 12 inputs are 1..12
    assert np.isnan(x[0, : INPUT - SCALE_POINTS]).all()
    np.testing.assert_allclose(x[0, -SCALE_POINTS:] * scale, values[:SCALE_POINTS])
    np.testing.assert_allclose(y[0] * scale, [13.0, 14.0, 15.0])
    last_scale = np.mean(values[25:37])
    np.testing.assert_allclose(y[-1] * last_scale, [38.0, 39.0, 40.0])


def test_windows_with_a_zero_scale_are_dropped() -> None:
    values = np.r_[np.zeros(20), np.ones(5)]
    x, _ = training_windows([values], horizon=2)
    # origins 12..23; the last 12 inputs are all zero up to origin 20
    assert x.shape[0] == 3


def test_last_inputs_pad_on_the_left() -> None:
    row = last_inputs(np.array([5.0, 6.0]))
    assert row.shape == (INPUT,)
    assert np.isnan(row[:-2]).all()
    np.testing.assert_array_equal(row[-2:], [5.0, 6.0])


def test_forecasts_are_put_back_on_each_series_scale() -> None:
    # Flat series at very different levels look alike once scaled: the trees must answer
    # each at its own level (a missing rescale would give about 1 for all of them).
    levels = [3.0, 50.0, 700.0]
    train = [np.full(40, level) for level in levels]
    data = BenchSeries("flat", ["a", "b", "c"], train, np.zeros((3, 2)), 2, 12, 3)
    out = fit_and_forecast({"flat": data}, max_horizon=2)["flat"]
    np.testing.assert_allclose(out, np.array(levels)[:, None].repeat(2, axis=1), rtol=1e-3)


def test_seasonal_reference_repeats_the_last_season() -> None:
    row = np.arange(1.0, 25.0)[None, :]  # 24 points: the last season is 13..24
    reference = seasonal_reference(row, horizon=15)
    np.testing.assert_array_equal(reference[0], np.r_[np.arange(13.0, 25.0), 13.0, 14.0, 15.0])
    short = np.r_[np.full(30, np.nan), [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]][None, :]
    # less than a season observed: missing references fall back to the last point
    np.testing.assert_array_equal(seasonal_reference(short, 3)[0], [9.0, 9.0, 9.0])


def test_seasonal_recipe_learns_departures_and_adds_the_reference_back() -> None:
    # A repeating pattern has zero departure from the seasonal naive forecast at every
    # step; the forecast must be the pattern itself (a missing add-back would give ~0).
    pattern = 100.0 + 10.0 * np.sin(2 * np.pi * np.arange(12) / 12)
    train = [np.tile(pattern, 6) * level for level in (1.0, 3.0)]
    x, y = training_windows(train, horizon=3, recipe=RECIPES["seasonal"])
    np.testing.assert_allclose(y, 0.0, atol=1e-12)
    data = BenchSeries("seasonal", ["a", "b"], train, np.zeros((2, 14)), 14, 12, 2)
    out = fit_and_forecast({"seasonal": data}, max_horizon=14, recipe=RECIPES["seasonal"])
    expected = np.stack([np.r_[pattern, pattern[:2]] * level for level in (1.0, 3.0)])
    np.testing.assert_allclose(out["seasonal"], expected, rtol=1e-6)
