"""Window helpers in moe/data.py."""

from __future__ import annotations

import numpy as np
import pytest

from moe.data import (
    SHORTEST_CONTEXT,
    dense_windows,
    newest_windows,
    rolling_windows,
    series_min_context,
    validation_windows,
    window_ranks,
)


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


def test_series_min_context_lowers_it_only_for_series_too_short_for_their_windows() -> None:
    """Guards the adaptive default: long series keep `most`; a short one gets exactly what
    it has before its oldest needed window's target; never under max(8, 2 seasons) nor over
    `most`."""
    lengths = [200, 30, 20, 12, 30]
    seasons = [12, 1, 1, 1, 12]
    got = series_min_context(lengths, seasons, 6, stride=6, windows=2, most=36)
    # 30 - 6 - 6 = 18 before the older window's target; 20 -> 8; 12 -> 0, floored at 8;
    # a monthly 30-point series has 18 but is floored at two seasons (24).
    assert got.tolist() == [36, 18, SHORTEST_CONTEXT, SHORTEST_CONTEXT, 24]
    assert series_min_context([400], [52], 6, stride=6, windows=2, most=36).tolist() == [36]
    windows = rolling_windows(
        [np.arange(n, dtype=np.float32) for n in lengths], 36, 6, holdout=1, min_context=got
    )
    per_series = np.bincount(windows.series_index, minlength=len(lengths))
    assert per_series.tolist()[1:4] == [2, 2, 0]  # one to train, one backtest; 12 too short
    for row in range(len(windows)):
        before = int(windows.origin[row])
        assert min(before, 36) >= got[windows.series_index[row]]
    with pytest.raises(ValueError, match="must match"):
        series_min_context([10, 20], [1], 6, stride=6, windows=2, most=36)


def test_validation_windows_add_a_seeded_share_of_single_window_series() -> None:
    """Guards the split that lets a store of short series validate: the newest window of
    each series with two or more, plus the only window of a seeded fifth of the others."""
    series_index = np.r_[np.arange(10), [10, 10, 11, 11]]  # ten singles, two with two
    origin = np.r_[np.full(10, 5), [20, 14, 20, 14]]
    mask = validation_windows(series_index, origin, seed=3)
    assert mask[10:].tolist() == [True, False, True, False]  # temporal for multi-window
    assert mask[:10].sum() == 2  # 20% of ten singles
    assert np.array_equal(mask, validation_windows(series_index, origin, seed=3))
    others = [validation_windows(series_index, origin, seed=s)[:10] for s in range(8)]
    assert len({tuple(m.tolist()) for m in others}) > 1  # the seed picks the series
    # Only single-window series (a yearly store): still some validation, some training.
    alone = validation_windows(np.arange(7), np.full(7, 9), seed=0)
    assert alone.sum() == 1
    assert not validation_windows(np.array([0]), np.array([9])).any()  # one series: none
