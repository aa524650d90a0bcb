"""The temporal-aggregation experiment computes what its docstring says it computes."""

from __future__ import annotations

import numpy as np

from benchmarks._accuracy_data import BenchSeries
from benchmarks.exp_temporal_aggregation import (
    aggregate,
    is_seasonal,
    pair_in_hindsight,
    seasonal_indices,
    temporal_aggregation,
)
from moe.experts.fake import FakeForecaster

PATTERN = np.array([0.6, 0.8, 1.0, 1.2, 1.4, 1.1, 0.9, 0.7, 1.3, 1.0, 0.9, 1.1])  # mean 1


def test_seasonal_indices_recover_an_exact_pattern() -> None:
    # A constant level times the pattern: the centred 2x12 mean is the level exactly.
    months = np.arange(48)
    indices, multiplicative = seasonal_indices(10.0 * PATTERN[months % 12], 12)
    assert multiplicative
    np.testing.assert_allclose(indices, PATTERN)
    # A line through zero plus a zero-mean pattern: additive, and the line drops out.
    additive = PATTERN - 1.0
    indices, multiplicative = seasonal_indices(-5.0 + 0.3 * months + additive[months % 12], 12)
    assert not multiplicative
    np.testing.assert_allclose(indices, additive, atol=1e-12)


def test_seasonality_test() -> None:
    months = np.arange(48)
    assert is_seasonal(PATTERN[months % 12], 12)
    assert not is_seasonal(PATTERN[months[:35] % 12], 12)  # shorter than three seasons
    noise = np.random.default_rng(0).normal(size=48)
    assert not is_seasonal(noise, 12)


def test_blocks_are_aligned_with_the_end() -> None:
    blocks = aggregate(np.arange(14.0), 3)
    assert blocks is not None
    np.testing.assert_allclose(blocks, np.array([3.0, 6.0, 9.0, 12.0]))
    assert aggregate(np.arange(11.0), 3) is None  # three blocks: too few to fit


def test_levels_are_averaged_and_the_season_put_back() -> None:
    # The fake forecasts each level's last block mean.
    ramp = np.arange(1.0, 25.0)  # 24 points: too short to test for a season
    seasonal = 10.0 * PATTERN[np.arange(48) % 12]  # ends in December (position 11)
    context = np.full((2, 48), np.nan)
    context[0, 24:] = ramp
    context[1] = seasonal
    point = temporal_aggregation(context, 5, FakeForecaster("f"))
    # ramp: last blocks of k = 1, 2, 3, 4, 6 (k = 12 has two blocks, skipped)
    np.testing.assert_allclose(point[0], [np.mean([24.0, 23.5, 23.0, 22.5, 21.5])] * 5)
    # seasonal: adjusted to a constant 10, so the forecast continues the pattern from January
    np.testing.assert_allclose(point[1], 10.0 * PATTERN[:5], rtol=1e-6)


def test_pair_in_hindsight_returns_the_mixture_it_names() -> None:
    rng = np.random.default_rng(1)
    train = [rng.normal(10.0, 1.0, size=30) for _ in range(3)]
    test = rng.normal(10.0, 1.0, size=(3, 4))
    data = BenchSeries("toy", ["a", "b", "c"], train, test, horizon=4, period=12, total=3)
    pool = {"far": test + 5.0, "near": test + 1.0, "below": test - 4.0}
    mixed, label = pair_in_hindsight(pool, data, np.stack(train))
    # 0.8 near + 0.2 below is the exact target, the best any pair can do
    assert label == "near*0.8+below*0.2"
    np.testing.assert_allclose(mixed, test)
