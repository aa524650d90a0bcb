"""The global experts inside the retrain (``global_mlp``, ``global_trees``): their training
windows, their fits, and the cross-fitted forecasts the gate learns from.

Each is trained on every series' points before its first backtest target, one window per
step (dense: these windows cost no expert run), so backtest targets are never seen. The
gate, though, trains on windows inside that same history; an expert forecasting windows it
was trained on looks far better there than on new data, and the gate would learn to
over-trust it. So the gate's training windows get **cross-fitted** forecasts: series are
split into seeded folds and each fold's windows are forecast by a model trained without
that fold's series. The backtest and every later forecast use the model trained on all
series (the one saved and cached), exactly as the accuracy benchmark does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moe.data import Windows, dense_windows
from moe.experts.base import Expert
from moe.experts.global_mlp import (
    GlobalMLPConfig,
    GlobalMLPForecaster,
    save_global_mlp,
    train_global_mlp,
)
from moe.experts.global_trees import (
    GlobalTreesConfig,
    GlobalTreesForecaster,
    save_global_trees,
    train_global_trees,
)
from pipeline.config import RetrainConfig
from storage.series import StoredSeries

_log = logging.getLogger(__name__)

#: Fewest observed points before a training window's target (shorter contexts are padded).
MIN_CONTEXT = 12

__all__ = [
    "GlobalTrainingWindows",
    "global_training_windows",
    "fit_global_expert",
    "save_trained_expert",
    "cross_fit",
]

#: A trained global expert (each is also an ``Expert``).
TrainedExpert = GlobalMLPForecaster | GlobalTreesForecaster


@dataclass(frozen=True)
class GlobalTrainingWindows:
    """``context`` ``(M, L)``, ``target`` ``(M, H)``, ``owner`` ``(M,)`` series index,
    ``season`` ``(M,)`` the owner's season length (for the MASE-unit loss)."""

    context: np.ndarray
    target: np.ndarray
    owner: np.ndarray
    season: np.ndarray

    def select(self, rows: np.ndarray) -> GlobalTrainingWindows:
        return GlobalTrainingWindows(
            self.context[rows], self.target[rows], self.owner[rows], self.season[rows]
        )


def first_backtest_origin(windows: Windows, n_series: int) -> np.ndarray:
    """``(n_series,)``: index of each series' first backtest target point (a huge number
    for a series without backtest windows)."""
    first = np.full(n_series, np.iinfo(np.int64).max)
    np.minimum.at(
        first, windows.series_index[windows.is_holdout], windows.origin[windows.is_holdout]
    )
    return first


def global_training_windows(
    series: StoredSeries, windows: Windows, input_length: int, pred_length: int
) -> GlobalTrainingWindows:
    """Every window (stride 1, ``moe.data.dense_windows``) of each series' points before its
    first backtest target point; targets running past that point are cut there (NaN), so no
    backtest target is seen. Contexts of ``input_length`` points (NaN-padded on the left, at
    least ``MIN_CONTEXT`` observed), as the expert sees them when it forecasts.
    ``windows.season_length`` gives each series' season."""
    first = first_backtest_origin(windows, len(series))
    season_of = np.ones(len(series), np.int64)
    if windows.season_length is not None:
        season_of[windows.series_index] = windows.season_length
    history = [
        values[: min(len(values), int(cut))]
        for values, cut in zip(series.values, first, strict=True)
    ]
    dense = dense_windows(
        history, input_length, pred_length, min_context=min(input_length, MIN_CONTEXT)
    )
    observed = ~np.isnan(dense.context).all(axis=1)  # dense_windows: every target has a point
    return GlobalTrainingWindows(
        context=dense.context[observed],
        target=dense.target[observed],
        owner=dense.series_index[observed],
        season=season_of[dense.series_index[observed]],
    )


def _mlp_config(config: RetrainConfig) -> GlobalMLPConfig:
    settings = config.global_expert
    return GlobalMLPConfig(
        lookbacks=tuple(settings.lookbacks),
        input_length=config.input_length,
        width=settings.width,
        depth=settings.depth,
        epochs=settings.epochs,
        min_steps=settings.min_steps,
        max_seconds=settings.max_seconds,
        seed=config.train.seed,
    )


def _trees_config(config: RetrainConfig) -> GlobalTreesConfig:
    return GlobalTreesConfig(
        input_points=min(GlobalTreesConfig.input_points, config.input_length),
        max_iter=config.global_expert.tree_rounds,
        max_windows=config.global_expert.tree_max_windows,
        threads=config.global_expert.tree_threads,
        seed=config.train.seed,
    )


def _train(
    name: str, training: GlobalTrainingWindows, config: RetrainConfig
) -> tuple[TrainedExpert, dict[str, Any]]:
    """Train global expert ``name`` on ``training``; returns it and its training report."""
    if name == "global_mlp":
        mlp, report = train_global_mlp(
            training.context, training.target, _mlp_config(config), training.season
        )
        _warn_if_cut(report, config)
        return mlp, report
    if name == "global_trees":
        return train_global_trees(training.context, training.target, _trees_config(config))
    raise ValueError(f"{name!r} is not a trained global expert")


def fit_global_expert(
    name: str, training: GlobalTrainingWindows, config: RetrainConfig
) -> TrainedExpert:
    """Expert ``name`` on every series' training windows (the one saved, cached and served)."""
    expert, report = _train(name, training, config)
    _log.info("%s trained on all series: %s", name, report)
    return expert


def save_trained_expert(expert: TrainedExpert, directory: Path) -> Path:
    """Save under ``<directory>/<name>-<fingerprint>.pt`` (the store's ``experts/``)."""
    path = directory / f"{expert.name}-{expert.fingerprint}.pt"
    if isinstance(expert, GlobalMLPForecaster):
        return save_global_mlp(expert, path)
    return save_global_trees(expert, path)


def _warn_if_cut(report: dict[str, object], config: RetrainConfig) -> None:
    """A binding time budget makes the network depend on the machine's speed: say so."""
    cut = report.get("epochs_cut_for_time")
    if isinstance(cut, list) and any(cut):
        _log.warning(
            "global_mlp: global_expert.max_seconds (%g s per network) cut %s epochs "
            "(members ran %s): the weights now depend on this machine's speed; raise "
            "max_seconds or lower epochs/min_steps for a reproducible retrain",
            config.global_expert.max_seconds,
            cut,
            report.get("epochs"),
        )


def cross_fit(
    name: str,
    training: GlobalTrainingWindows,
    windows: Windows,
    n_series: int,
    config: RetrainConfig,
) -> np.ndarray:
    """``(N, H)`` float32 forecasts of the retrain's non-backtest ``windows``, each by
    expert ``name`` trained without its series' fold (NaN on backtest windows)."""
    folds = config.global_expert.folds
    fold_of = np.random.default_rng(config.train.seed).integers(0, folds, size=n_series)
    forecasts = np.full(windows.target.shape, np.nan, np.float32)
    for fold in range(folds):
        keep = fold_of[training.owner] != fold
        rows = ~windows.is_holdout & (fold_of[windows.series_index] == fold)
        if not rows.any():
            continue
        if not keep.any():
            raise ValueError(
                f"{name} cross-fit: fold {fold} holds every series' training windows; "
                "store more series or lower global_expert.folds"
            )
        model, report = _train(name, training.select(keep), config)
        _log.info("%s fold %d of %d: %s", name, fold + 1, folds, report)
        context = torch.from_numpy(np.ascontiguousarray(windows.context[rows]))
        forecasts[rows] = model.forecast(context, windows.target.shape[1]).point.numpy()
    return forecasts


def with_cross_fitted(
    points: torch.Tensor, experts: list[Expert], out_of_fold: dict[str, np.ndarray]
) -> torch.Tensor:
    """``points`` ``(N, E, H)`` with each trained expert's column replaced by its
    cross-fitted forecasts where those exist (the non-backtest windows)."""
    points = points.clone()
    for position, expert in enumerate(experts):
        forecasts = out_of_fold.get(expert.name)
        if forecasts is None:
            continue
        rows = ~np.isnan(forecasts).all(axis=1)
        points[torch.from_numpy(rows), position] = torch.from_numpy(forecasts[rows]).to(
            points.dtype
        )
    return points
