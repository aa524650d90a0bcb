"""Season length per stored series (the per-season expert variants: ``moe.precompute``).

A store can mix monthly, quarterly and daily series: each series gets its own period
(``moe.seasonality.season_length_of``: a forced value, else its ``freq``, else detected from
its values). Season-aware experts (the statistical ones) are run once per distinct season
on the windows of that season, each variant with its own cache key.
"""

from __future__ import annotations

import numpy as np

from moe.seasonality import season_length_of
from storage.series import StoredSeries

__all__ = ["series_season_lengths"]


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
