"""The retrain's data steps: windows from the store, the experts (pretrained and trained
on the training windows), and every expert's forecasts through the store's cache.

``TrainingData`` is what the gate fit and the backtest read: windows plus the cached
``(N, E, H)`` forecasts.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from moe.data import Windows, observed_windows, rolling_windows, series_min_context
from moe.experts.base import Expert, ExpertConfig
from moe.experts.registry import TRAINED_EXPERTS, build_expert, resolve_experts
from moe.experts.trained import TrainedExperts, train_pool_experts, with_cross_fitted
from moe.precompute import experts_for_season
from pipeline.config import RetrainConfig
from pipeline.precompute import PrecomputeStats, load_cached, precompute_cache
from pipeline.seasons import series_season_lengths
from storage.series import StoredSeries, load_series
from storage.store import Store

_log = logging.getLogger(__name__)

__all__ = [
    "TrainingData",
    "build_experts_for",
    "TrainedExperts",
    "add_trained_experts",
    "prepare_windows",
    "fill_cache",
    "fill_cache_shard",
    "load_training_data",
]


@dataclass
class TrainingData:
    """Windows with every expert's cached forecasts.

    ``points`` ``(N, E, H)``, ``quantiles`` ``(N, E, H, Q)``; ``windows.is_holdout`` marks
    the backtest windows (never trained on).
    """

    series: StoredSeries
    windows: Windows
    points: torch.Tensor
    quantiles: torch.Tensor

    @property
    def season_lengths(self) -> torch.Tensor:
        """``(N,)`` int64: each window's seasonal period (the MASE-unit loss's per-window lag)."""
        seasons = self.windows.season_length
        if seasons is None:
            raise ValueError("these windows carry no season lengths (use prepare_windows)")
        return torch.from_numpy(seasons)


def build_experts_for(config: RetrainConfig) -> list[Expert]:
    """The config's pretrained experts (trained ones come from ``add_trained_experts``)."""
    # Per-series seasons (season_length None) start from the non-seasonal variant; each
    # window's period is applied with moe.experts.base.for_season where the experts run.
    expert_config = ExpertConfig(
        device=config.device,
        batch_size=config.expert_batch_size,
        season_length=config.season_length or 1,
    )
    names = [name for name in config.experts if name not in TRAINED_EXPERTS]
    if len(names) == len(config.experts):
        return resolve_experts(names, config.device, expert_config)
    return [build_expert(name, expert_config) for name in names]


def add_trained_experts(
    store: Store,
    experts: list[Expert],
    series: StoredSeries,
    windows: Windows,
    config: RetrainConfig,
) -> TrainedExperts:
    """The config's experts in order: ``experts`` (its pretrained ones) and its trained ones,
    trained on every series' history before its backtest windows, saved under
    ``<store>/experts/`` and loaded back through the registry (the path a forecast job
    takes), with their cross-fitted forecasts of the gate's windows
    (``moe.experts.trained.train_pool_experts``). An ``s3://`` store gets each checkpoint
    published whole under ``<prefix>/experts/`` (trained in a local scratch folder)."""
    expert_config = ExpertConfig(device=config.device, batch_size=config.expert_batch_size)
    folder: AbstractContextManager[str] = (
        tempfile.TemporaryDirectory(prefix="moe-experts-", dir=store.scratch_dir())
        if store.remote
        else nullcontext(str(store.root / "experts"))
    )
    with folder as directory:
        trained = train_pool_experts(
            config.experts,
            experts,
            series.values,
            windows,
            config.global_expert,
            config.train.seed,
            Path(directory),
            expert_config,
        )
        if store.remote:
            _publish_checkpoints(store, trained.experts, Path(directory))
    return trained


def _publish_checkpoints(store: Store, experts: list[Expert], folder: Path) -> None:
    """Publish the checkpoints trained into local ``folder`` under the store's ``experts/``;
    each expert then names its store location, which its model file records (forecast jobs
    stage it from there: ``pipeline.models.registered_router``)."""
    with store.writer():  # publishing needs the writer lease, as every store write
        for expert in experts:
            local = getattr(expert, "checkpoint", None)
            if expert.name in TRAINED_EXPERTS and local and Path(local).parent == folder:
                location, _ = store.publish_copy(local, "experts", Path(local).name)
                expert.checkpoint = location  # type: ignore[attr-defined]


def prepare_windows(store: Store, config: RetrainConfig) -> tuple[StoredSeries, Windows]:
    """Rolling windows over the stored series; windows with nothing observed are dropped.

    Each window carries its series' season length (``windows.season_length`` ``(N,)``):
    ``config.season_length`` when set, else from the series' freq, else detected on the
    series without its backtest targets. Under the default ``min_context`` (None) a series
    too short for one training window at 36 points gets it with fewer
    (``moe.data.series_min_context``), so a store of yearly or quarterly series trains.
    """
    series = load_series(store)
    stride = config.stride or config.pred_length
    backtest_points = (config.backtest_windows - 1) * stride + config.pred_length
    seasons = series_season_lengths(series, config.season_length, exclude_last=backtest_points)
    min_context: int | np.ndarray = config.window_min_context
    if config.min_context is None:
        min_context = series_min_context(
            [len(values) for values in series.values],
            seasons,
            config.pred_length,
            stride=stride,
            windows=config.backtest_windows + 1,  # the backtest windows and one to train on
            most=config.window_min_context,
        )
    windows = rolling_windows(
        series.values,
        config.input_length,
        config.pred_length,
        stride=config.stride,
        max_windows_per_series=config.max_windows_per_series,
        holdout=config.backtest_windows,
        min_context=min_context,
    )
    windows = observed_windows(replace(windows, season_length=seasons[windows.series_index]))
    if len(windows) == 0 or windows.is_holdout.all():
        raise ValueError(
            f"no training windows: {len(series)} stored series, none long enough for "
            f"min_context={config.shortest_window_context} + pred_length={config.pred_length} "
            f"with {config.backtest_windows} backtest window(s) of stride {stride} before it; "
            "ingest longer series, or lower min_context, pred_length or backtest_windows"
        )
    return series, windows


def fill_cache(
    store: Store, experts: list[Expert], windows: Windows, config: RetrainConfig
) -> list[PrecomputeStats]:
    """Every expert's forecasts of every window into the store's cache (computed once per
    distinct window); sharded over Dask when ``config.dask`` is set."""
    if config.dask is not None:
        from pipeline.sharding import fill_cache_sharded  # Dask only when it is configured

        return fill_cache_sharded(store, experts, windows, config)
    return cache_windows(store, experts, windows, config)


def cache_windows(
    store: Store,
    experts: list[Expert],
    windows: Windows,
    config: RetrainConfig,
    progress: bool = True,
) -> list[PrecomputeStats]:
    """``experts`` on ``windows`` in this process, each window with its own season, with
    the config's batch size and device (what is cached already is read, not recomputed)."""
    return precompute_cache(
        store,
        experts,
        windows.context,
        config.pred_length,
        batch_size=config.expert_batch_size,
        device=config.device,
        season_lengths=windows.season_length,
        progress=progress,
    )


@lru_cache(maxsize=2)
def _shard_experts(config_json: str) -> tuple[Expert, ...]:
    """The config's pretrained experts, built once per worker process (weights load once)."""
    return tuple(build_experts_for(RetrainConfig.model_validate_json(config_json)))


def fill_cache_shard(
    store_root: str,
    config: RetrainConfig,
    context: np.ndarray,
    season_length: int | None = None,
    cache_keys: Sequence[str] | None = None,
) -> list[PrecomputeStats]:
    """One shard of a distributed precompute: load the experts here (on the worker) and
    fill the cache for ``context`` ``(n, L)``, every row of period ``season_length`` (None:
    the experts as configured). ``cache_keys``: only the experts with these keys (the
    caller's; None: all of the config's pretrained experts)."""
    experts = list(_shard_experts(config.model_copy(update={"dask": None}).model_dump_json()))
    if cache_keys is not None:
        experts = [expert for expert in experts if expert.cache_key in cache_keys]
    if season_length is not None:
        experts = experts_for_season(experts, season_length)
    return precompute_cache(
        Store.open(store_root),
        experts,
        context,
        config.pred_length,
        batch_size=config.expert_batch_size,
        device=config.device,
        progress=False,
    )


def load_training_data(
    store: Store,
    experts: list[Expert],
    series: StoredSeries,
    windows: Windows,
    pred_length: int,
    out_of_fold: dict[str, np.ndarray] | None = None,
) -> TrainingData:
    """The cached ``(N, E, H)`` forecasts of ``windows``; a trained expert's column holds
    its cross-fitted forecasts on the non-backtest windows where ``out_of_fold`` has them."""
    points, quantiles = load_cached(
        store, experts, windows.context, pred_length, season_lengths=windows.season_length
    )
    assert quantiles is not None
    if out_of_fold:
        points = with_cross_fitted(points, experts, out_of_fold)
    return TrainingData(series=series, windows=windows, points=points, quantiles=quantiles)
