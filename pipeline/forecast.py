"""Batch forecasts: the champion gate over stored series, written to the forecasts table.

Series are processed in chunks of ``chunk_size`` (memory stays bounded whatever the number
of series); only the two experts the gate picks run for each series. A run's rows are
written to a staging folder and swapped in whole, so a rerun with the same ``run_id``
replaces them and a killed run leaves nothing half written.

Series shorter than the model's ``input_length`` are left-padded with missing values
(NaN): the experts see a mask, the gate sees zeros there.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pandas.tseries.frequencies import to_offset

from moe.experts.base import Expert
from moe.intervals import IntervalModel, ResidualQuantileExpert, floor_nonnegative
from moe.precompute import experts_for_season, season_groups
from moe.router import MoERouter
from pipeline.config import ForecastConfig
from pipeline.models import load_verified_artifact, registered_router
from pipeline.seasons import series_season_lengths
from storage.registry import ModelVersion, RegistryError, champion, get_model
from storage.schemas import QUANTILE_COLUMNS
from storage.series import StoredSeries, load_series
from storage.sql import query
from storage.store import Store

__all__ = [
    "ForecastRun",
    "choose_model",
    "batch_forecast",
    "new_run_id",
    "series_to_forecast",
    "count_usage",
    "forecast_shard",
    "last_contexts",
    "forecast_rows",
    "route_by_season",
    "LoadedModel",
    "load_model",
]


@dataclass(frozen=True)
class ForecastRun:
    run_id: str
    model_version: str
    n_series: int
    n_rows: int
    expert_usage: dict[str, int]  # times each expert was among a series' two


def choose_model(store: Store, version: str | None) -> ModelVersion:
    if version is not None:
        return get_model(store, version)
    current = champion(store)
    if current is None:
        raise RegistryError("no champion model yet: run the retrain flow first")
    return current


def last_contexts(series: StoredSeries, input_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``input_length`` points of each series ``(B, L)`` (left-padded with NaN)
    and the number of points each series has ``(B,)``."""
    contexts = np.full((len(series), input_length), np.nan, np.float32)
    lengths = np.array([len(values) for values in series.values], np.int64)
    for row, values in enumerate(series.values):
        tail = values[-input_length:]
        contexts[row, input_length - len(tail) :] = tail
    return contexts, lengths


@lru_cache(maxsize=4096)
def _timestamps(start: str | None, freq: str | None, n_points: int, pred_length: int) -> tuple:
    """Timestamps of the ``pred_length`` steps after a series' ``n_points`` observations.

    Cached: series usually share start, frequency and length. Jumps to the first forecast
    step with one offset multiplication instead of enumerating the whole history.
    """
    if start is None or freq is None:
        return (None,) * pred_length
    offset = to_offset(freq)
    # Same steps as pd.date_range(start, periods=n_points + horizon, freq)[n_points:]: roll
    # the start onto the offset first, as date_range does, then jump n_points steps.
    first = offset.rollforward(pd.Timestamp(start)) + n_points * offset
    stamps = pd.date_range(first, periods=pred_length, freq=offset)
    if stamps.tz is None:
        stamps = stamps.tz_localize("UTC")
    return tuple(stamps.to_pydatetime())


def _with_experts(router: MoERouter, experts: list[Expert]) -> MoERouter:
    """A shallow copy of ``router`` (same gate) whose experts are ``experts`` (same order)."""
    variant = copy.copy(router)
    variant.experts = experts
    return variant


def _experts_for(
    router: MoERouter, season: int | None, intervals: IntervalModel | None
) -> list[Expert]:
    """The router's experts for one period, wrapped to fill missing quantile levels."""
    experts = list(router.experts) if season is None else experts_for_season(router.experts, season)
    if intervals is None:
        return experts
    offsets = intervals.offsets_for([expert.name for expert in experts])  # (E, H, Q)
    return [ResidualQuantileExpert(expert, offsets[index]) for index, expert in enumerate(experts)]


def route_by_season(
    router: MoERouter,
    contexts: np.ndarray,
    season_lengths: np.ndarray | None,
    device: str,
    intervals: IntervalModel | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Route ``contexts`` ``(B, L)``, each row with its period's expert variants.

    Returns ``point`` ``(B, H)``, ``quantiles`` ``(B, H, Q)`` (float64, NaN where absent),
    ``indices`` ``(B, 2)`` and ``weights`` ``(B, 2)``. ``season_lengths`` ``(B,)``; None
    routes every row with the router's experts as they are. ``intervals`` (from the
    artifact): experts' missing levels are filled and the mixture's quantiles calibrated.
    Rows whose observed context is never negative are floored at 0 (``floor_nonnegative``).
    """
    b, pred_length = contexts.shape[0], router.pred_length
    point = np.full((b, pred_length), np.nan)
    quantiles = np.full((b, pred_length, len(QUANTILE_COLUMNS)), np.nan)
    indices = np.zeros((b, 2), np.int64)
    weights = np.zeros((b, 2))
    groups = [(None, np.arange(b))] if season_lengths is None else season_groups(season_lengths)
    for season, rows in groups:
        routed = router
        if season is not None or intervals is not None:
            routed = _with_experts(router, _experts_for(router, season, intervals))
        with torch.no_grad():
            output = routed.route(torch.from_numpy(contexts[rows]).to(device))
        point[rows] = output.point.cpu().numpy()
        if output.quantiles is not None:
            quantiles[rows] = output.quantiles.cpu().numpy()
        if intervals is not None:
            quantiles[rows] = intervals.apply(point[rows], quantiles[rows], contexts[rows])
        indices[rows] = output.routing.indices.numpy()
        weights[rows] = output.routing.weights.numpy()
    # A series that was never negative gets no negative point or bound (moe.intervals).
    return (
        floor_nonnegative(point, contexts),
        floor_nonnegative(quantiles, contexts),
        indices,
        weights,
    )


def forecast_rows(
    router: MoERouter,
    series: StoredSeries,
    run_id: str,
    model_version: str,
    device: str = "cpu",
    season_lengths: np.ndarray | None = None,
    intervals: IntervalModel | None = None,
) -> pa.Table:
    """Long-format rows (one per series and step) for one chunk of series.

    ``season_lengths`` ``(B,)``: each series' period for the season-aware experts (None:
    the experts as the router has them); ``intervals``: see ``route_by_season``.
    """
    pred_length = router.pred_length
    contexts, lengths = last_contexts(series, router.input_length)
    point, quantiles, indices, weights = route_by_season(
        router, contexts, season_lengths, device, intervals
    )
    keys = router.expert_keys
    b = len(series)
    steps = np.tile(np.arange(1, pred_length + 1, dtype=np.int32), b)
    per_row = np.repeat(np.arange(b), pred_length)
    stamps: list = []
    for row in range(b):
        stamps += _timestamps(series.start[row], series.freq[row], int(lengths[row]), pred_length)
    columns: dict[str, object] = {
        "run_id": pa.array([run_id] * (b * pred_length)),
        "model_version": pa.array([model_version] * (b * pred_length)),
        "series_id": pa.array(np.asarray(series.series_id, dtype=object)[per_row]),
        "series_hash": pa.array(np.asarray(series.content_hash, dtype=object)[per_row]),
        "origin_index": pa.array(lengths[per_row]),
        "step": pa.array(steps),
        "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "point": pa.array(point.reshape(-1), from_pandas=True),
        "expert_1": pa.array(np.asarray(keys, dtype=object)[indices[:, 0]][per_row]),
        "weight_1": pa.array(weights[:, 0][per_row]),
        "expert_2": pa.array(np.asarray(keys, dtype=object)[indices[:, 1]][per_row]),
        "weight_2": pa.array(weights[:, 1][per_row]),
        "created_at": pa.array(
            [datetime.now(UTC)] * (b * pred_length), pa.timestamp("us", tz="UTC")
        ),
    }
    for q, name in enumerate(QUANTILE_COLUMNS):
        columns[name] = pa.array(quantiles[:, :, q].reshape(-1), from_pandas=True)
    return pa.table(columns)


@dataclass(frozen=True)
class LoadedModel:
    """A registered model ready to forecast: its router plus the artifact's season and
    interval settings. Batch forecasts and the HTTP service both forecast through it."""

    model: ModelVersion
    router: MoERouter
    per_series_season: bool
    forced_season: int | None
    intervals: IntervalModel | None

    def rows(self, series: StoredSeries, run_id: str, device: str = "cpu") -> pa.Table:
        """Long-format forecast rows of ``series`` (see ``forecast_rows``)."""
        seasons = (
            series_season_lengths(series, self.forced_season) if self.per_series_season else None
        )
        return forecast_rows(
            self.router, series, run_id, self.model.model_version, device, seasons, self.intervals
        )


def load_model(
    store: Store, model: ModelVersion, device: str = "cpu", experts: list[Expert] | None = None
) -> LoadedModel:
    """Verify ``model``'s artifact (``load_verified_artifact``) and build what it needs."""
    artifact = load_verified_artifact(store, model)
    return LoadedModel(
        model=model,
        router=registered_router(store, artifact, device, experts=experts),
        per_series_season=artifact.season.get("mode") == "per_series",
        forced_season=artifact.season.get("forced"),
        intervals=IntervalModel.from_plain(artifact.intervals),
    )


def new_run_id() -> str:
    """A fresh forecast run id: UTC time and a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]


def series_to_forecast(store: Store, config: ForecastConfig) -> list[str]:
    """``config.series_ids`` (deduplicated, each checked to be stored), else every stored
    series, sorted."""
    if config.series_ids is None:
        ids = query(store, "SELECT series_id FROM series ORDER BY series_id").column(0)
        return list(ids.to_pylist())
    series_ids = list(dict.fromkeys(config.series_ids))
    known = query(
        store, "SELECT series_id FROM series WHERE list_contains($1, series_id)", [series_ids]
    ).column(0)
    unknown = sorted(set(series_ids) - set(known.to_pylist()))
    if unknown:
        raise ValueError(f"{len(unknown)} requested series are not in the store: {unknown[:10]}")
    return series_ids


def count_usage(rows: pa.Table, usage: dict[str, int]) -> None:
    """Add to ``usage`` how often each expert is among a series' two in ``rows``."""
    firsts = rows.filter(pc.equal(rows.column("step"), 1))
    for column in ("expert_1", "expert_2"):
        for name in firsts.column(column).to_pylist():
            usage[name] = usage.get(name, 0) + 1


@lru_cache(maxsize=2)
def _shard_model(store_root: str, model_version: str, device: str) -> LoadedModel:
    """The model a shard worker forecasts with, loaded once per worker process."""
    store = Store.open_existing(store_root)
    return load_model(store, get_model(store, model_version), device)


def forecast_shard(
    store_root: str,
    model_version: str,
    series_ids: list[str],
    run_id: str,
    chunk_size: int,
    device: str = "cpu",
) -> list[pa.Table]:
    """One shard of a sharded batch forecast (``pipeline.sharding``), run on a worker: the
    rows of ``series_ids``, one table per ``chunk_size`` series; the caller writes them."""
    store = Store.open_existing(store_root)
    loaded = _shard_model(store.location, model_version, device)
    tables = []
    for begin in range(0, len(series_ids), chunk_size):
        chunk = load_series(store, series_ids[begin : begin + chunk_size])
        if len(chunk):
            tables.append(loaded.rows(chunk, run_id, device))
    return tables


def batch_forecast(
    store: Store,
    config: ForecastConfig,
    on_chunk: Callable[[int, int], None] | None = None,
    experts: list[Expert] | None = None,
) -> ForecastRun:
    """Forecast the selected series with the chosen model; returns counts and usage.

    ``experts``: already loaded experts to use instead of building the model's (matched by
    name; a worker that keeps them loaded, or tests with fakes). With ``config.dask`` set the
    series are sharded over Dask (``pipeline.sharding``) and each worker builds the model's
    own experts (``experts`` is not used).
    """
    if config.dask is not None:
        from pipeline.sharding import forecast_sharded  # Dask only when it is configured

        return forecast_sharded(store, config, on_chunk)
    model = choose_model(store, config.model_version)
    loaded = load_model(store, model, config.device, experts)
    run_id = config.run_id or new_run_id()
    series_ids = series_to_forecast(store, config)
    usage = dict.fromkeys(loaded.router.expert_keys, 0)
    n_rows = 0
    n_series = 0
    with store.rewrite_partition("forecasts", {"run_id": run_id}) as write:
        for chunk_index, begin in enumerate(range(0, len(series_ids), config.chunk_size)):
            chunk = load_series(store, series_ids[begin : begin + config.chunk_size])
            if len(chunk) == 0:
                continue
            rows = loaded.rows(chunk, run_id, config.device)
            write(f"chunk-{chunk_index:06d}", rows)
            n_rows += rows.num_rows
            n_series += len(chunk)
            count_usage(rows, usage)
            if on_chunk is not None:
                on_chunk(n_series, len(series_ids))
    return ForecastRun(run_id, model.model_version, n_series, n_rows, usage)
