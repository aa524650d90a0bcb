"""The models the service forecasts with, and the one forecasting call it batches.

``RouterCache`` keeps loaded routers by registry version and follows the champion: the
registry is read at most every ``champion_refresh_s`` seconds, so a promotion (or a
rollback) reaches the service without a restart while a request does not pay a registry
read. Models are loaded as batch forecasts load them (``pipeline.forecast.load_model``:
registry sha256, path inside the store, artifact consistency, then the router with its
season and interval settings), and every forecast row is made by ``LoadedModel.rows``, so
a forecast over HTTP equals the stored batch forecast of the same series.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.forecast import LoadedModel, choose_model, load_model
from serving.schemas import ExpertWeight, SeriesForecast, SeriesIn
from storage.registry import ModelVersion
from storage.schemas import QUANTILE_COLUMNS
from storage.series import StoredSeries
from storage.store import Store

__all__ = ["RouterCache", "ModelForecasts", "forecast_batch", "table_to_forecasts"]


class RouterCache:
    """Loaded models by version (a few, least recently used dropped) and the champion."""

    def __init__(
        self,
        store: Store,
        device: str = "cpu",
        champion_refresh_s: float = 5.0,
        max_models: int = 4,
    ) -> None:
        self._store = store
        self._device = device
        self._refresh_s = champion_refresh_s
        self._max_models = max_models
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._champion: ModelVersion | None = None
        self._champion_read_at = -math.inf

    @property
    def device(self) -> str:
        return self._device

    def champion(self) -> ModelVersion:
        """The registry's champion, re-read when the last read is older than the refresh."""
        now = time.monotonic()
        if self._champion is None or now - self._champion_read_at > self._refresh_s:
            self._champion = choose_model(self._store, None)  # RegistryError when none
            self._champion_read_at = now
        return self._champion

    def get(self, version: str | None) -> LoadedModel:
        """The loaded model (``None`` = the champion), verified when first loaded."""
        model = self.champion() if version is None else choose_model(self._store, version)
        if model.model_version in self._loaded:
            self._loaded.move_to_end(model.model_version)
            return self._loaded[model.model_version]
        loaded = load_model(self._store, model, self._device)
        self._loaded[model.model_version] = loaded
        while len(self._loaded) > self._max_models:
            self._loaded.popitem(last=False)
        return loaded


@dataclass(frozen=True)
class ModelForecasts:
    """One batch's forecasts with the model that made them."""

    model: ModelVersion
    forecasts: list[SeriesForecast]


def _as_stored(series: list[SeriesIn]) -> StoredSeries:
    """Request series in the shape batch forecasting reads from the store."""
    return StoredSeries(
        series_id=[s.series_id or str(position) for position, s in enumerate(series)],
        content_hash=[""] * len(series),  # request series are not stored
        start=[None if s.start is None else s.start.isoformat() for s in series],
        freq=[s.freq for s in series],
        values=[
            np.array([np.nan if v is None else v for v in s.values], np.float64) for s in series
        ],
    )


def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def table_to_forecasts(
    table: pa.Table, pred_length: int, with_timestamps: bool
) -> list[SeriesForecast]:
    """Long-format forecast rows (series-major, steps 1..H) -> one ``SeriesForecast`` each."""
    n_series = table.num_rows // pred_length
    point = table.column("point").to_numpy(zero_copy_only=False).reshape(n_series, pred_length)
    quantiles = {
        name: table.column(name).to_numpy(zero_copy_only=False).reshape(n_series, pred_length)
        for name in QUANTILE_COLUMNS
    }
    ids = table.column("series_id").to_pylist()[::pred_length]
    firsts = table.take(list(range(0, table.num_rows, pred_length)))  # step 1 of each series
    experts = list(
        zip(
            firsts.column("expert_1").to_pylist(),
            firsts.column("weight_1").to_pylist(),
            firsts.column("expert_2").to_pylist(),
            firsts.column("weight_2").to_pylist(),
            strict=True,
        )
    )
    stamps = table.column("timestamp").to_pylist()
    out: list[SeriesForecast] = []
    for row in range(n_series):
        row_stamps = stamps[row * pred_length : (row + 1) * pred_length]
        name_1, weight_1, name_2, weight_2 = experts[row]
        out.append(
            SeriesForecast(
                series_id=ids[row],
                point=_nullable(point[row]),
                quantiles={name: _nullable(q[row]) for name, q in quantiles.items()},
                timestamps=row_stamps if with_timestamps and row_stamps[0] is not None else None,
                experts=[
                    ExpertWeight(name=name_1, weight=weight_1),
                    ExpertWeight(name=name_2, weight=weight_2),
                ],
            )
        )
    return out


def forecast_batch(
    cache: RouterCache, version: str | None, series: list[SeriesIn]
) -> ModelForecasts:
    """Forecast every series with one router call (only the two chosen experts run per row)."""
    loaded = cache.get(version)
    table = loaded.rows(_as_stored(series), "api", cache.device)
    return ModelForecasts(loaded.model, table_to_forecasts(table, loaded.router.pred_length, True))
