"""Backtest scoring with intervals on every row (``moe.intervals``).

* Experts' missing quantile levels are filled from their residuals on the *training*
  windows (never the backtest ones).
* The mixture's quantiles are conformally calibrated on the backtest windows. The factors
  stored in the artifact use every backtest window; the coverage and width reported for
  the mixture are cross-fitted (series split in two folds, each fold calibrated on the
  other), so the reported numbers are on points the calibration did not see.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from moe.experts.base import QUANTILE_LEVELS
from moe.intervals import (
    IntervalModel,
    apply_factors,
    fit_conformal,
    floor_nonnegative,
    residual_offsets,
)
from moe.metrics import SeasonLength
from moe.router import MoERouter
from pipeline.backtest import Scores, score_models

__all__ = ["backtest_with_intervals", "cross_fitted_calibration"]


def cross_fitted_calibration(
    point: np.ndarray,
    quantiles: np.ndarray,
    target: np.ndarray,
    context: np.ndarray,
    series_index: np.ndarray,
    paired: bool = False,
) -> np.ndarray:
    """Calibrated quantiles ``(N, H, Q)`` where each window's factors were fitted on the
    other fold of series (folds: series index parity). With one fold only, in-sample."""
    fold = series_index % 2 == 1
    if fold.all() or not fold.any():
        factors = fit_conformal(point, quantiles, target, context, paired=paired)
        return apply_factors(point, quantiles, context, factors)
    calibrated = np.empty_like(quantiles, dtype=np.float64)
    for held in (fold, ~fold):
        fit = ~held
        factors = fit_conformal(
            point[fit], quantiles[fit], target[fit], context[fit], paired=paired
        )
        calibrated[held] = apply_factors(point[held], quantiles[held], context[held], factors)
    return calibrated


def backtest_with_intervals(
    router: MoERouter,
    names: Sequence[str],
    context: np.ndarray,
    target: np.ndarray,
    series_index: np.ndarray,
    season_length: np.ndarray,
    points: torch.Tensor,
    quantiles: torch.Tensor,
    holdout: np.ndarray,
    name: str = "mixture",
    paired: bool = False,
) -> tuple[Scores, IntervalModel]:
    """Score experts and the router's mixture on the ``holdout`` windows, with intervals.

    ``context`` ``(N, L)``, ``target`` ``(N, H)``, ``series_index`` and ``season_length``
    ``(N,)``, ``points`` ``(N, E, H)``, ``quantiles`` ``(N, E, H, Q)`` (raw cache),
    ``holdout`` ``(N,)`` bool. Returns the scores (the mixture's quantiles cross-fitted)
    and the interval model for the artifact (factors fitted on every holdout window).
    ``paired``: one factor per interval (levels q and 1 - q), see ``fit_conformal``.
    """
    train = ~holdout
    raw_points = points.numpy().astype(np.float64)
    offsets = residual_offsets(target[train], raw_points[train], context[train])  # (E, H, Q)
    model = IntervalModel(
        expert_offsets=dict(zip(names, offsets, strict=True)),
        factors=np.ones((target.shape[1], len(QUANTILE_LEVELS))),
        levels=QUANTILE_LEVELS,
        n_calibration=0,
    )
    rows = np.flatnonzero(holdout)
    held_context = context[rows]
    filled = model.fill(names, raw_points[rows], quantiles[rows].numpy(), held_context)
    output = router.route_cached(
        torch.from_numpy(held_context),
        points[rows].contiguous(),
        torch.from_numpy(filled.astype(np.float32)),
    )
    assert output.quantiles is not None
    point = output.point.numpy().astype(np.float64)  # (n, H)
    mixed = output.quantiles.numpy().astype(np.float64)  # (n, H, Q)
    held_target = target[rows]
    factors = fit_conformal(point, mixed, held_target, held_context, paired=paired)
    calibrated = cross_fitted_calibration(
        point, mixed, held_target, held_context, series_index[rows], paired
    )
    model = IntervalModel(
        expert_offsets=model.expert_offsets,
        factors=factors,
        levels=QUANTILE_LEVELS,
        n_calibration=int(rows.size),
    )
    seasons: SeasonLength = season_length[rows]

    # Scored as the forecasts table holds them: floored at 0 on never-negative windows, the
    # experts too, so the promotion compares like with like (the factors are fitted before).
    def floor(values: np.ndarray) -> np.ndarray:
        return floor_nonnegative(values, held_context)

    scores = score_models(
        held_context,
        held_target,
        series_index[rows],
        list(names),
        floor(raw_points[rows]),
        floor(filled),
        {
            name: (floor(point), floor(calibrated)),
            f"{name}_uncalibrated": (floor(point), floor(mixed)),
        },
        seasons,
    )
    return scores, model
