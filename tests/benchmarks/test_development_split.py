"""The accuracy benchmark's development split: the official holdout never enters it."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._accuracy_data import BenchSeries, development_split, make_windows


def _series(holdout_offset: float = 0.0) -> BenchSeries:
    """Three series of 60, 48 and 40 training points, h=6; ``holdout_offset`` moves xx only."""
    rng = np.random.default_rng(0)
    lengths = (60, 48, 40)
    return BenchSeries(
        name="toy",
        ids=["a", "b", "c"],
        train=[rng.normal(10, 1, n) for n in lengths],
        test=rng.normal(10, 1, (3, 6)) + holdout_offset,
        horizon=6,
        period=12,
        total=3,
    )


def test_development_windows_ignore_the_official_holdout() -> None:
    """Guards --development: no window (context or target) reads the official holdout."""
    first = make_windows(development_split(_series(0.0)), 24, 2, None, 12)
    moved = make_windows(development_split(_series(1e6)), 24, 2, None, 12)
    np.testing.assert_array_equal(first.context, moved.context)
    np.testing.assert_array_equal(first.target, moved.target)


def test_development_test_windows_are_the_old_validation_windows() -> None:
    """Guards the cache reuse: a development test window equals the official validation one."""
    data = _series()
    official = make_windows(data, 24, 3, None, 12)
    development = make_windows(development_split(data), 24, 2, None, 12)
    for series in range(3):
        val = official.is_validation & (official.series_index == series)
        test = development.is_test & (development.series_index == series)
        np.testing.assert_array_equal(official.context[val], development.context[test])
        np.testing.assert_array_equal(official.target[val], development.target[test])


def test_development_split_rejects_series_too_short() -> None:
    """Guards the error: a series with no more than h training points is named."""
    data = _series()
    short = BenchSeries(**{**data.__dict__, "train": [data.train[0], np.ones(6), data.train[2]]})
    with pytest.raises(ValueError, match="'b'"):
        development_split(short)
