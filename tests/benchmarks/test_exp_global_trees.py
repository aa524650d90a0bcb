"""The global-trees experiment builds the windows its docstring says, with no look-ahead."""

from __future__ import annotations

import numpy as np

from benchmarks._accuracy_data import BenchSeries
from benchmarks.exp_global_trees import (
    INPUT,
    SCALE_POINTS,
    fit_and_forecast,
    last_inputs,
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
