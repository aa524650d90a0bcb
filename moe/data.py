"""Rolling-origin windows: the one window maker of the seed path and the retrain.

Shapes: a window pairs ``context`` ``(input_length,)`` with ``target`` ``(pred_length,)``;
stacked windows are ``(N, input_length)`` and ``(N, pred_length)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_MIN_CONTEXT",
    "Windows",
    "SHORTEST_CONTEXT",
    "SINGLE_WINDOW_VALIDATION_SHARE",
    "default_min_context",
    "series_min_context",
    "shortest_context",
    "left_padded",
    "rolling_windows",
    "observed_windows",
    "newest_windows",
    "validation_windows",
    "window_ranks",
]

#: Fewest points before a window's target when the caller sets none (both entry points:
#: ``moe retrain`` and the seed's ``train_and_save``). Three years of monthly data: short
#: series keep their windows under a long ``input_length``, NaN-padded on the left.
DEFAULT_MIN_CONTEXT = 36

#: Under the default ``min_context`` a series too short for its windows at
#: ``DEFAULT_MIN_CONTEXT`` points still gets them with fewer (``series_min_context``), but
#: never fewer than this: AutoETS and AutoCES need 7 points to fit at all.
SHORTEST_CONTEXT = 8

#: Share of the series with a single training window that validate with it
#: (``validation_windows``): what lets a store of short series (yearly, quarterly) validate.
SINGLE_WINDOW_VALIDATION_SHARE = 0.2


def default_min_context(input_length: int, min_context: int | None = None) -> int:
    """``min_context`` when set (checked: 1 <= it <= ``input_length``), else the smaller of
    ``DEFAULT_MIN_CONTEXT`` and ``input_length``."""
    if min_context is None:
        return min(DEFAULT_MIN_CONTEXT, input_length)
    if not 1 <= min_context <= input_length:
        raise ValueError(
            f"min_context must be between 1 and input_length ({input_length}), got {min_context}"
        )
    return min_context


def shortest_context(input_length: int, min_context: int | None = None) -> int:
    """The fewest points before any window's target: ``min_context`` when set, else
    ``SHORTEST_CONTEXT`` (what ``series_min_context`` gives a short series at least), both
    capped by ``default_min_context``. Model files record it, so a forecast accepts a
    series as short as the shortest window the gate was trained on."""
    most = default_min_context(input_length, min_context)
    return most if min_context is not None else min(SHORTEST_CONTEXT, most)


def series_min_context(
    lengths: Sequence[int] | np.ndarray,
    seasons: Sequence[int] | np.ndarray,
    pred_length: int,
    *,
    stride: int,
    windows: int,
    most: int,
) -> np.ndarray:
    """``(S,)`` int64: each series' fewest points before a window's target, under the default
    ``min_context`` (None).

    ``most`` (``default_min_context``) where the series is long enough to keep its newest
    ``windows`` windows with that much context; a shorter series gets what it has before the
    ``windows``-th newest window's target, so that window still exists (e.g. one training
    window before the backtest windows of a yearly series of 20 points). Never fewer than
    ``max(SHORTEST_CONTEXT, 2 * season)`` points (capped at ``most``): a seasonal model fitted
    on a window then sees two seasons, as it will on the series' whole history.
    ``lengths`` and ``seasons`` are ``(S,)``; ``stride`` steps between window origins.
    """
    if stride < 1 or windows < 1 or pred_length < 1 or most < 1:
        raise ValueError(
            f"stride, windows, pred_length and most must be >= 1, got {stride}, {windows}, "
            f"{pred_length}, {most}"
        )
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    seasons = np.asarray(seasons, np.int64).reshape(-1)
    if lengths.shape != seasons.shape:
        raise ValueError(f"lengths {lengths.shape} and seasons {seasons.shape} must match")
    available = lengths - (windows - 1) * stride - pred_length
    floor = np.minimum(most, np.maximum(SHORTEST_CONTEXT, 2 * seasons))
    return np.clip(available, floor, most)


@dataclass(frozen=True)
class Windows:
    """Stacked rolling-origin windows.

    ``context``: ``(N, input_length)`` float32, NaN = missing.
    ``target``: ``(N, pred_length)`` float32, NaN = missing.
    ``series_index``: ``(N,)`` int64, which input series each window came from.
    ``origin``: ``(N,)`` int64, index in the series of the first target point.
    ``is_holdout``: ``(N,)`` bool, True for the last ``holdout`` windows of each series.
    ``season_length``: ``(N,)`` int64, the seasonal period of each window's series, or None
    when the caller did not set one (see ``moe.seasonality``; ``select`` keeps it aligned).
    """

    context: np.ndarray
    target: np.ndarray
    series_index: np.ndarray
    origin: np.ndarray
    is_holdout: np.ndarray
    season_length: np.ndarray | None = None

    def select(self, rows: np.ndarray) -> Windows:
        """The windows at ``rows`` (a ``(N,)`` bool mask or integer positions), every field."""
        return Windows(
            context=self.context[rows],
            target=self.target[rows],
            series_index=self.series_index[rows],
            origin=self.origin[rows],
            is_holdout=self.is_holdout[rows],
            season_length=None if self.season_length is None else self.season_length[rows],
        )

    def __len__(self) -> int:
        return int(self.context.shape[0])


def rolling_windows(
    sequences: Sequence[np.ndarray | Sequence[float]],
    input_length: int,
    pred_length: int,
    *,
    stride: int | None = None,
    max_windows_per_series: int | None = None,
    holdout: int = 1,
    min_context: int | Sequence[int] | np.ndarray | None = None,
) -> Windows:
    """Rolling-origin windows over each series, newest first when capped.

    Origins step back from the end of each series by ``stride`` (default ``pred_length``),
    so the last window always ends at the last observation. ``max_windows_per_series``
    keeps the newest ones. The newest ``holdout`` windows of each series are flagged for
    validation/backtests; the others are for training. ``min_context`` (default
    ``input_length``): fewest points a window needs before its target, one number or one
    per series (``series_min_context``); contexts shorter than ``input_length`` are
    NaN-padded on the left (missing, as experts and gates read NaN).
    """
    if input_length < 1 or pred_length < 1:
        raise ValueError(
            f"input_length and pred_length must be >= 1, got {input_length}, {pred_length}"
        )
    step = pred_length if stride is None else stride
    if step < 1:
        raise ValueError(f"stride must be >= 1, got {step}")
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}")
    shortest_of = np.broadcast_to(
        np.asarray(input_length if min_context is None else min_context, np.int64),
        (len(sequences),),
    )
    if shortest_of.size and shortest_of.min() < 1:
        raise ValueError(f"min_context must be >= 1, got {int(shortest_of.min())}")
    width = input_length + pred_length
    contexts: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    series_index: list[int] = []
    origins: list[int] = []
    holdout_flags: list[bool] = []
    for index, raw in enumerate(sequences):
        values = np.asarray(raw, dtype=np.float32)
        usable = len(values) - pred_length - int(shortest_of[index])
        n_windows = 0 if usable < 0 else usable // step + 1
        if max_windows_per_series is not None:
            n_windows = min(n_windows, max_windows_per_series)
        for rank in range(n_windows):  # rank 0 is the newest window
            end = len(values) - rank * step
            contexts.append(
                left_padded(values[max(end - width, 0) : end - pred_length], input_length)
            )
            targets.append(values[end - pred_length : end])
            series_index.append(index)
            origins.append(end - pred_length)
            holdout_flags.append(rank < holdout)
    if not contexts:
        return Windows(
            context=np.empty((0, input_length), np.float32),
            target=np.empty((0, pred_length), np.float32),
            series_index=np.empty(0, np.int64),
            origin=np.empty(0, np.int64),
            is_holdout=np.empty(0, bool),
        )
    return Windows(
        context=np.stack(contexts),
        target=np.stack(targets),
        series_index=np.asarray(series_index, np.int64),
        origin=np.asarray(origins, np.int64),
        is_holdout=np.asarray(holdout_flags, bool),
    )


def dense_windows(
    sequences: Sequence[np.ndarray | Sequence[float]],
    input_length: int,
    pred_length: int,
    *,
    min_context: int = 1,
) -> Windows:
    """Every window of every series, one per step, for training a global model.

    ``rolling_windows`` with stride 1 and no holdout, except that the newest
    ``pred_length - 1`` origins are kept too: their targets run past the series' end and
    are NaN-padded on the right (at least one observed point each), so the most recent
    dynamics are learned from as well. ``origin`` indexes the unpadded series.
    """
    padding = np.full(max(pred_length - 1, 0), np.nan, np.float32)
    padded = [np.concatenate([np.asarray(raw, np.float32), padding]) for raw in sequences]
    windows = rolling_windows(
        padded, input_length, pred_length, stride=1, holdout=0, min_context=min_context
    )
    return observed_windows(windows)


def left_padded(values: np.ndarray, length: int) -> np.ndarray:
    """``values`` ``(n,)`` with ``n <= length``, NaN-padded on the left to ``(length,)``."""
    if len(values) == length:
        return values
    out = np.full(length, np.nan, np.float32)
    out[length - len(values) :] = values
    return out


def observed_windows(windows: Windows) -> Windows:
    """The windows with at least one observed value in both context and target.

    The one usable-window filter: a window with nothing observed on either side can neither
    be forecast nor scored, so the seed path and the retrain both drop it before experts run.
    """
    usable = ~np.isnan(windows.context).all(axis=1) & ~np.isnan(windows.target).all(axis=1)
    return windows if usable.all() else windows.select(usable)


def window_ranks(series_index: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``(N,)`` int64: each window's rank among its series' windows, newest first (0 =
    newest). ``series_index`` and ``origin`` are ``(N,)`` (as in ``Windows``)."""
    if series_index.shape != origin.shape or series_index.ndim != 1:
        raise ValueError(
            f"series_index and origin must both be (N,), got {series_index.shape}, {origin.shape}"
        )
    rank = np.zeros(series_index.shape[0], np.int64)
    if rank.size == 0:
        return rank
    order = np.lexsort((-origin, series_index))  # by series, newest first
    sorted_series = series_index[order]
    first_of_series = np.searchsorted(sorted_series, sorted_series)  # first row of its series
    rank[order] = np.arange(order.size) - first_of_series
    return rank


def newest_windows(series_index: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: True for each series' newest window, where the series has two or more.

    A temporal validation split for gate training: random splits leak, because neighbouring
    windows of one series overlap. Series with a single window keep it for training.
    ``series_index`` and ``origin`` are ``(N,)`` (as in ``Windows``).
    """
    rank = window_ranks(series_index, origin)
    if rank.size == 0:
        return rank.astype(bool)
    counts = np.bincount(series_index)
    return (rank == 0) & (counts[series_index] >= 2)


def validation_windows(
    series_index: np.ndarray,
    origin: np.ndarray,
    *,
    seed: int = 0,
    single_share: float = SINGLE_WINDOW_VALIDATION_SHARE,
) -> np.ndarray:
    """``(N,)`` bool: the gate's validation windows among training windows ``(N,)``.

    Each series' newest window where it has two or more (``newest_windows``: temporal, so
    overlapping windows of one series never straddle the split), and the only window of a
    seeded ``single_share`` of the series that have one (at least one such series when two
    or more have one): an across-series split, which cannot leak through overlap, so a
    store of short series (one training window each) still validates.
    """
    mask = newest_windows(series_index, origin)
    if mask.size == 0:
        return mask
    counts = np.bincount(series_index)
    single = np.flatnonzero(counts == 1)
    if single.size >= 2 and single_share > 0:
        chosen = max(1, round(single_share * single.size))
        picked = np.random.default_rng(seed).choice(single, size=chosen, replace=False)
        mask |= np.isin(series_index, picked)
    return mask
