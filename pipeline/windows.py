"""Training and backtest windows built from the store."""

from __future__ import annotations

from collections.abc import Sequence

from moe.data import Windows, rolling_windows
from storage.series import StoredSeries, load_series
from storage.store import Store

__all__ = ["windows_from_store"]


def windows_from_store(
    store: Store,
    input_length: int,
    pred_length: int,
    *,
    stride: int | None = None,
    max_windows_per_series: int | None = None,
    holdout: int = 1,
    series_ids: Sequence[str] | None = None,
    min_context: int | None = None,
) -> tuple[StoredSeries, Windows]:
    """Rolling-origin windows over the latest stored series (see ``moe.data.rolling_windows``).

    ``windows.series_index`` indexes into the returned ``StoredSeries``.
    """
    series = load_series(store, series_ids)
    windows = rolling_windows(
        series.values,
        input_length,
        pred_length,
        stride=stride,
        max_windows_per_series=max_windows_per_series,
        holdout=holdout,
        min_context=min_context,
    )
    return series, windows
