"""Season length of a series: from its frequency alias, else detected from its values.

One mapping from pandas offset aliases to the seasonal period the statistical experts and
MASE use (``season_from_freq``), and one detector for series without a frequency
(``detect_season``). Both are pure functions of their inputs (NumPy; no IO).

Frequency mapping (the period is the length of the cycle that matters most for that
sampling, as in the M-competitions' conventions):

* yearly (``A``, ``Y``, ``YS``, ``YE``, ``BA``, ...): 1; quarterly (``Q``, ``QS``, ...): 4;
  monthly (``M``, ``MS``, ``ME``, ``BM``, ...): 12; semi-monthly (``SM``, ``SMS``): 24;
  weekly (``W``, ``W-SUN``, ...): 52; daily (``D``): 7; business daily (``B``, ``C``): 5;
  hourly (``H``, ``h``, ``BH``): 24; secondly (``S``, ``s``): 60; below a second: 1.
* minutely (``T``, ``min``): the hourly cycle (60 / n) for steps under 10 minutes, the
  daily cycle (1440 / n) from 10 minutes on (``15min`` -> 96), so the period stays short
  enough to fit a context window.
* a multiple ``n`` of the base unit (``3M``, ``2H``) divides the period when it divides it
  evenly (``3M`` -> 4, ``2H`` -> 12), otherwise there is no whole cycle and the period is 1.
* an anchor suffix (``-DEC``, ``-SUN``) does not change the period. Unknown aliases give
  ``None`` (the caller detects instead).

Detection (``detect_season``): the autocorrelation of the first differences (differencing
removes the trend, which otherwise makes every lag look significant) is computed at each
candidate lag that fits at least ``min_cycles`` times in the series. A lag qualifies when
its autocorrelation is a local peak and exceeds the two-sided 90% Bartlett bound
``1.645 * sqrt((1 + 2 * sum_{k<m} r_k^2) / n)`` (the seasonality test of the M4 Theta
benchmark, applied to differences). The qualifying lag with the highest autocorrelation
wins, except that a smaller qualifying candidate that divides it and reaches
``divisor_ratio`` of its autocorrelation is preferred (a quarterly series also peaks at 8
and 12). No qualifying lag gives 1 (not seasonal).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from moe.gaps import fill_row

__all__ = [
    "DEFAULT_CANDIDATES",
    "season_from_freq",
    "detect_season",
    "season_length_of",
]

#: Lags the detector tries by default: quarterly, business week, week, month-of-year,
#: hour-of-day, week-of-year.
DEFAULT_CANDIDATES: tuple[int, ...] = (4, 5, 7, 12, 24, 52)

_BASE_PERIOD: dict[str, int] = {
    **dict.fromkeys(("A", "AS", "Y", "YS", "YE", "BA", "BAS", "BY", "BYS", "BYE"), 1),
    **dict.fromkeys(("Q", "QS", "QE", "BQ", "BQS", "BQE"), 4),
    **dict.fromkeys(("M", "MS", "ME", "BM", "BMS", "BME", "CBM", "CBMS", "CBME"), 12),
    **dict.fromkeys(("SM", "SMS", "SME"), 24),
    "W": 52,
    **dict.fromkeys(("D", "d"), 7),
    **dict.fromkeys(("B", "C"), 5),
    **dict.fromkeys(("H", "h", "BH", "bh", "CBH", "cbh"), 24),
    **dict.fromkeys(("S", "s"), 60),
    **dict.fromkeys(("L", "ms", "U", "us", "N", "ns"), 1),
}
_MINUTE = ("T", "min")
_ALIAS = re.compile(r"^\s*(\d*)\s*([A-Za-z]+?)(?:-[A-Za-z]{2,3})?\s*$")


def season_from_freq(freq: str | None) -> int | None:
    """The seasonal period of a pandas offset alias (module docstring), None when unknown."""
    if freq is None:
        return None
    match = _ALIAS.match(freq)
    if match is None:
        return None
    multiple = int(match.group(1)) if match.group(1) else 1
    base = match.group(2)
    if multiple < 1:
        return None
    if base in _MINUTE:
        period = 60 if multiple < 10 else 1440
    elif base in _BASE_PERIOD:
        period = _BASE_PERIOD[base]
    else:
        return None
    return period // multiple if period % multiple == 0 else 1


def _autocorrelation(values: np.ndarray, max_lag: int) -> np.ndarray:
    """Sample autocorrelation ``r_0..r_max_lag`` of ``values`` ``(n,)`` (r_0 = 1)."""
    centred = values - values.mean()
    denominator = float(centred @ centred)
    result = np.zeros(max_lag + 1)
    if denominator <= 0:
        return result
    result[0] = 1.0
    for lag in range(1, max_lag + 1):
        result[lag] = float(centred[lag:] @ centred[:-lag]) / denominator
    return result


def detect_season(
    values: np.ndarray | Sequence[float],
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
    *,
    min_cycles: int = 3,
    z: float = 1.645,
    divisor_ratio: float = 0.5,
) -> int:
    """The seasonal period of ``values`` ``(n,)`` (NaN = missing), or 1 (module docstring).

    ``min_cycles``: a lag is tried only when the differenced series holds that many cycles.
    ``z``: the Bartlett bound's multiplier (1.645: 90% two-sided).
    """
    if any(int(c) < 2 for c in candidates):
        raise ValueError(f"candidate season lengths must be >= 2, got {list(candidates)}")
    series = fill_row(np.asarray(values, np.float64), trailing="drop")
    diffs = np.diff(series)
    n = diffs.shape[0]
    usable = sorted({int(c) for c in candidates if min_cycles * int(c) <= n})
    if not usable:
        return 1
    acf = _autocorrelation(diffs, max(usable) + 1)
    cumulative = 1.0 + 2.0 * np.cumsum(acf[1:] ** 2)  # entry m-1: 1 + 2 sum_{k<=m} r_k^2
    passed: dict[int, float] = {}
    for lag in usable:
        bound = z * np.sqrt((cumulative[lag - 2] if lag >= 2 else 1.0) / n)
        is_peak = acf[lag] >= acf[lag - 1] and acf[lag] >= acf[lag + 1]
        if acf[lag] > bound and is_peak:
            passed[lag] = float(acf[lag])
    if not passed:
        return 1
    best = max(passed, key=lambda lag: passed[lag])
    for lag in sorted(passed):  # the smallest qualifying divisor that is nearly as strong
        if lag < best and best % lag == 0 and passed[lag] >= divisor_ratio * passed[best]:
            return lag
    return best


def season_length_of(
    freq: str | None,
    values: np.ndarray | Sequence[float],
    forced: int | None = None,
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
) -> int:
    """One series' season length: ``forced`` when given, else from ``freq``, else detected."""
    if forced is not None:
        if forced < 1:
            raise ValueError(f"a forced season length must be >= 1, got {forced}")
        return int(forced)
    from_freq = season_from_freq(freq)
    if from_freq is not None:
        return from_freq
    return detect_season(values, candidates)
