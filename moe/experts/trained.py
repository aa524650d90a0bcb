"""The trained experts of a pool (``global_mlp``, ``global_trees``): their settings, their
training windows, their fits, and the cross-fitted forecasts a gate learns from.

Both entry points train them the same way: ``moe retrain`` (``pipeline.training_data``) on
the stored series, the seed's ``train_and_save`` on the lines of its JSONL file.

Each expert is trained on every series' points before its first backtest target, one window
per step (dense: these windows cost no expert run), so backtest targets are never seen (the
seed path has no backtest windows: it trains on every point). The gate, though, trains on
windows inside that same history; an expert forecasting windows it was trained on looks far
better there than on new data, and the gate would learn to over-trust it. So the gate's
windows get **cross-fitted** forecasts: series are split into seeded folds and each fold's
windows are forecast by a model trained without that fold's series. The backtest and every
later forecast use the model trained on all series (the one saved and cached).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from moe.data import Windows, dense_windows
from moe.experts.base import Expert, ExpertConfig
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
from moe.experts.registry import TRAINED_EXPERTS, build_expert

_log = logging.getLogger(__name__)

#: Fewest observed points before a training window's target (shorter contexts are padded).
MIN_CONTEXT = 12

__all__ = [
    "MIN_CONTEXT",
    "GlobalExpertConfig",
    "GlobalTrainingWindows",
    "TrainedExpert",
    "TrainedExperts",
    "first_backtest_origin",
    "history_windows",
    "fit_global_expert",
    "save_trained_expert",
    "cross_fit",
    "with_cross_fitted",
    "train_pool_experts",
]

#: A trained global expert (each is also an ``Expert``).
TrainedExpert = GlobalMLPForecaster | GlobalTreesForecaster


class GlobalExpertConfig(BaseModel):
    """How the global experts ('global_mlp', 'global_trees') are trained, when they are in
    the pool. 'folds' applies to both; 'tree_*' to the trees, the rest to the MLP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = Field(default=512, ge=1, le=8192, description="Units per hidden layer.")
    depth: int = Field(default=3, ge=1, le=16, description="Hidden layers.")
    epochs: int = Field(default=10, ge=1, le=10_000, description="Passes over its windows.")
    min_steps: int = Field(
        default=2000,
        ge=1,
        le=1_000_000,
        description="At least this many optimiser steps (small stores get more epochs).",
    )
    lookbacks: tuple[Annotated[int, Field(ge=1, le=16)], ...] = Field(
        default=(2, 3, 4),
        min_length=1,
        max_length=8,
        description="One network per lookback, in multiples of pred_length (capped at "
        "input_length); their forecasts are averaged. Each costs one more fit.",
    )
    folds: int = Field(
        default=2,
        ge=2,
        le=10,
        description="Series folds for the cross-fitted forecasts the gate learns from: each "
        "fold's training windows are forecast by a network trained without its series, so the "
        "gate sees the expert's out-of-sample error (as at forecast time).",
    )
    max_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Time budget per network fit: epochs are planned from a timed probe so "
        "a fit fits it (fewer epochs, still annealed; a warning says so, and then the weights "
        "depend on the machine's speed).",
    )
    tree_rounds: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="global_trees: boosting rounds per forecast step (its cost is linear in it).",
    )
    tree_threads: int | None = Field(
        default=1,
        ge=1,
        le=1024,
        description="global_trees: OpenMP threads per fit (null: every core). One by default: "
        "more threads than free cores made fits over 5x slower (docs/RETRAIN.md).",
    )
    tree_max_windows: int = Field(
        default=300_000,
        ge=100,
        le=10_000_000,
        description="global_trees: larger stores train on a seeded sample of this many windows.",
    )


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


@dataclass(frozen=True)
class TrainedExperts:
    """The pool with its trained experts built from their saved checkpoints, and each trained
    expert's cross-fitted forecasts ``(N, H)`` of the non-backtest windows (NaN elsewhere)."""

    experts: list[Expert]
    out_of_fold: dict[str, np.ndarray]


def first_backtest_origin(windows: Windows, n_series: int) -> np.ndarray:
    """``(n_series,)``: index of each series' first backtest target point (a huge number
    for a series without backtest windows)."""
    first = np.full(n_series, np.iinfo(np.int64).max)
    np.minimum.at(
        first, windows.series_index[windows.is_holdout], windows.origin[windows.is_holdout]
    )
    return first


def history_windows(
    values: Sequence[np.ndarray], windows: Windows, input_length: int, pred_length: int
) -> GlobalTrainingWindows:
    """Every window (stride 1, ``moe.data.dense_windows``) of each series' points before its
    first backtest target point; targets running past that point are cut there (NaN), so no
    backtest target is seen. ``values[i]`` is series ``i`` of ``windows.series_index``.
    Contexts of ``input_length`` points (NaN-padded on the left, at least ``MIN_CONTEXT``
    observed), as the expert sees them when it forecasts. ``windows.season_length`` gives
    each series' season."""
    first = first_backtest_origin(windows, len(values))
    season_of = np.ones(len(values), np.int64)
    if windows.season_length is not None:
        season_of[windows.series_index] = windows.season_length
    history = [
        np.asarray(series, np.float32)[: min(len(series), int(cut))]
        for series, cut in zip(values, first, strict=True)
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


def _mlp_config(settings: GlobalExpertConfig, input_length: int, seed: int) -> GlobalMLPConfig:
    return GlobalMLPConfig(
        lookbacks=tuple(settings.lookbacks),
        input_length=input_length,
        width=settings.width,
        depth=settings.depth,
        epochs=settings.epochs,
        min_steps=settings.min_steps,
        max_seconds=settings.max_seconds,
        seed=seed,
    )


def _trees_config(settings: GlobalExpertConfig, input_length: int, seed: int) -> GlobalTreesConfig:
    return GlobalTreesConfig(
        input_points=min(GlobalTreesConfig.input_points, input_length),
        max_iter=settings.tree_rounds,
        max_windows=settings.tree_max_windows,
        threads=settings.tree_threads,
        seed=seed,
    )


def _train(
    name: str,
    training: GlobalTrainingWindows,
    settings: GlobalExpertConfig,
    input_length: int,
    seed: int,
) -> tuple[TrainedExpert, dict[str, Any]]:
    """Train global expert ``name`` on ``training``; returns it and its training report."""
    if name == "global_mlp":
        mlp, report = train_global_mlp(
            training.context,
            training.target,
            _mlp_config(settings, input_length, seed),
            training.season,
        )
        _warn_if_cut(report, settings)
        return mlp, report
    if name == "global_trees":
        return train_global_trees(
            training.context, training.target, _trees_config(settings, input_length, seed)
        )
    raise ValueError(f"{name!r} is not a trained global expert")


def fit_global_expert(
    name: str,
    training: GlobalTrainingWindows,
    settings: GlobalExpertConfig,
    input_length: int,
    seed: int,
) -> TrainedExpert:
    """Expert ``name`` on every series' training windows (the one saved, cached and served)."""
    expert, report = _train(name, training, settings, input_length, seed)
    _log.info("%s trained on all series: %s", name, report)
    return expert


def save_trained_expert(expert: TrainedExpert, directory: Path) -> Path:
    """Save under ``<directory>/<name>-<fingerprint>.pt`` (a store's ``experts/``)."""
    path = directory / f"{expert.name}-{expert.fingerprint}.pt"
    if isinstance(expert, GlobalMLPForecaster):
        return save_global_mlp(expert, path)
    return save_global_trees(expert, path)


def _warn_if_cut(report: dict[str, object], settings: GlobalExpertConfig) -> None:
    """A binding time budget makes the network depend on the machine's speed: say so."""
    cut = report.get("epochs_cut_for_time")
    if isinstance(cut, list) and any(cut):
        _log.warning(
            "global_mlp: global_expert.max_seconds (%g s per network) cut %s epochs "
            "(members ran %s): the weights now depend on this machine's speed; raise "
            "max_seconds or lower epochs/min_steps for a reproducible retrain",
            settings.max_seconds,
            cut,
            report.get("epochs"),
        )


def cross_fit(
    name: str,
    training: GlobalTrainingWindows,
    windows: Windows,
    n_series: int,
    settings: GlobalExpertConfig,
    seed: int,
) -> np.ndarray:
    """``(N, H)`` float32 forecasts of the non-backtest ``windows``, each by expert ``name``
    trained without its series' fold (NaN on backtest windows); folds seeded by ``seed``."""
    folds = settings.folds
    input_length = windows.context.shape[1]
    fold_of = np.random.default_rng(seed).integers(0, folds, size=n_series)
    forecasts = np.full(windows.target.shape, np.nan, np.float32)
    for fold in range(folds):
        keep = fold_of[training.owner] != fold
        rows = ~windows.is_holdout & (fold_of[windows.series_index] == fold)
        if not rows.any():
            continue
        if not keep.any():
            raise ValueError(
                f"{name} cross-fit: fold {fold} holds every series' training windows; "
                "give it more series or lower global_expert.folds"
            )
        model, report = _train(name, training.select(keep), settings, input_length, seed)
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


def train_pool_experts(
    pool: Sequence[str],
    pretrained: Sequence[Expert],
    values: Sequence[np.ndarray],
    windows: Windows,
    settings: GlobalExpertConfig,
    seed: int,
    directory: Path,
    expert_config: ExpertConfig,
) -> TrainedExperts:
    """The experts named ``pool``, in its order: ``pretrained`` ones as they are, and each
    trained expert (:data:`TRAINED_EXPERTS`) that is not among them trained here.

    ``values[i]``: series ``i`` of ``windows.series_index``. Each is trained on every
    series' history before its backtest windows (:func:`history_windows`), saved under
    ``directory`` and built back through the registry from that checkpoint (the path a
    forecast job takes; ``expert_config`` gives device and batch size); its forecasts of
    the non-backtest windows are cross-fitted (:func:`cross_fit`).
    """
    by_name = {expert.name: expert for expert in pretrained}
    names = [name for name in pool if name in TRAINED_EXPERTS and name not in by_name]
    missing = [name for name in pool if name not in by_name and name not in names]
    if missing:
        raise ValueError(f"experts {missing} are neither built nor trained experts")
    out_of_fold: dict[str, np.ndarray] = {}
    if names:
        input_length, pred_length = windows.context.shape[1], windows.target.shape[1]
        training = history_windows(values, windows, input_length, pred_length)
        if len(training.context) == 0:
            raise ValueError(
                f"{', '.join(names)}: no training windows: no series has "
                f"{min(input_length, MIN_CONTEXT)} + {pred_length} points before its backtest"
            )
    for name in names:
        path = save_trained_expert(
            fit_global_expert(name, training, settings, input_length, seed), directory
        )
        by_name[name] = build_expert(
            name, expert_config.model_copy(update={"checkpoint": str(path)})
        )
        out_of_fold[name] = cross_fit(name, training, windows, len(values), settings, seed)
    return TrainedExperts([by_name[name] for name in pool], out_of_fold)
