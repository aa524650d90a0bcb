"""Window helpers in moe/data.py."""

from __future__ import annotations

import numpy as np
import pytest

from moe.data import dense_windows, newest_windows, rolling_windows, window_ranks


def test_newest_windows_marks_each_series_newest_window_when_it_has_two() -> None:
    """Guards the temporal validation split: newest window per series; singletons train."""
    series = [np.arange(20.0), np.arange(9.0), np.arange(30.0)]  # 5, 1 and 8 windows
    windows = rolling_windows(series, 4, 3, stride=3, holdout=0)
    mask = newest_windows(windows.series_index, windows.origin)
    for index in range(3):
        rows = np.flatnonzero(windows.series_index == index)
        newest = rows[np.argmax(windows.origin[rows])]
        expected = {newest} if rows.size >= 2 else set()
        assert set(np.flatnonzero(mask & (windows.series_index == index))) == expected
    shuffled = np.random.default_rng(0).permutation(len(windows))
    again = newest_windows(windows.series_index[shuffled], windows.origin[shuffled])
    assert np.array_equal(again, mask[shuffled])  # order of rows does not matter


def test_newest_windows_rejects_mismatched_shapes() -> None:
    """Guards bad input: series_index and origin must be (N,) alike."""
    assert newest_windows(np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0,)
    with pytest.raises(ValueError, match=r"must both be \(N,\)"):
        newest_windows(np.zeros(3, np.int64), np.zeros(2, np.int64))


def test_rolling_windows_min_context_pads_short_histories_on_the_left() -> None:
    """Guards the one window maker's short-history option (the accuracy benchmark's
    windows): contexts shorter than input_length are NaN-padded, and no window has fewer
    than min_context points before its target."""
    series = [np.arange(10, dtype=np.float32)]
    full = rolling_windows(series, 6, 2, stride=2, holdout=0)
    assert full.origin.tolist() == [8, 6]  # the default needs 6 context points
    short = rolling_windows(series, 6, 2, stride=2, holdout=0, min_context=3)
    assert short.origin.tolist() == [8, 6, 4]
    assert np.isnan(short.context[2, :2]).all() and short.context[2, 2:].tolist() == [0, 1, 2, 3]
    assert short.target[2].tolist() == [4, 5]
    np.testing.assert_array_equal(short.context[:2], full.context)
    strict = rolling_windows(series, 6, 2, stride=2, holdout=0, min_context=7)
    assert strict.origin.tolist() == [8]  # more history than the context shows
    with pytest.raises(ValueError, match="min_context"):
        rolling_windows(series, 6, 2, min_context=0)


def test_dense_windows_keep_every_origin_with_partial_targets_at_the_end() -> None:
    """Guards the global expert's windows: one per step, the newest targets NaN-padded past
    the series' end, origins indexing the unpadded series, never a target without a point."""
    values = np.arange(10, dtype=np.float64)
    windows = dense_windows([values], input_length=4, pred_length=3, min_context=2)
    assert sorted(windows.origin.tolist()) == list(range(2, 10))
    rows = zip(windows.context, windows.target, windows.origin, strict=True)
    for context, target, origin in rows:
        observed = target[~np.isnan(target)]
        np.testing.assert_array_equal(observed, values[origin : origin + 3])
        assert len(observed) == min(3, 10 - origin)
        history = values[max(0, origin - 4) : origin]
        np.testing.assert_array_equal(context[~np.isnan(context)], history)
    assert not windows.is_holdout.any()


def test_window_ranks_count_from_each_series_newest_in_any_row_order() -> None:
    """Guards the rank that newest_windows and the selection's folds share."""
    series_index = np.array([1, 0, 1, 2, 0, 1])
    origin = np.array([10, 50, 30, 7, 40, 20])
    assert window_ranks(series_index, origin).tolist() == [2, 0, 0, 0, 1, 1]
    assert newest_windows(series_index, origin).tolist() == [False, True, True, False, False, False]
    assert window_ranks(np.empty(0, np.int64), np.empty(0, np.int64)).size == 0
