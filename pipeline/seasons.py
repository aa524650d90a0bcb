"""Season length per stored series, and the experts configured for each season.

A store can mix monthly, quarterly and daily series: each series gets its own period
(``moe.seasonality.season_length_of``: a forced value, else its ``freq``, else detected from
its values). Season-aware experts (the statistical ones) are run once per distinct season
on the windows of that season, each variant with its own cache key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moe.experts.base import Expert, for_season
from moe.seasonality import season_length_of
from storage.series import StoredSeries

__all__ = ["series_season_lengths", "season_groups", "experts_for_season"]


def series_season_lengths(
    series: StoredSeries, forced: int | None = None, exclude_last: int = 0
) -> np.ndarray:
    """``(S,)`` int64: each series' season length.

    ``exclude_last``: points at the end of each series that detection must not look at (the
    backtest targets of a retrain), so held-out values never shape the model.
    """
    lengths = np.empty(len(series), np.int64)
    for row, (freq, values) in enumerate(zip(series.freq, series.values, strict=True)):
        history = values[: max(len(values) - exclude_last, 0)] if exclude_last else values
        lengths[row] = season_length_of(freq, history, forced)
    return lengths


def season_groups(season_lengths: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(N,)`` season lengths -> ``[(m, rows)]`` with ``rows`` the ``(n_m,)`` positions of
    season ``m``, ``m`` ascending; every position appears in exactly one group."""
    seasons = np.asarray(season_lengths, np.int64)
    return [(int(m), np.flatnonzero(seasons == m)) for m in np.unique(seasons)]


def experts_for_season(experts: Sequence[Expert], season_length: int) -> list[Expert]:
    """Each expert configured for ``season_length`` (season-free experts pass through)."""
    return [for_season(expert, season_length) for expert in experts]
