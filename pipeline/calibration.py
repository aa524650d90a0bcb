"""Backtest scoring with intervals on every row (``moe.intervals``).

* Experts' missing quantile levels are filled from their residuals on the *training*
  windows (never the backtest ones).
* The mixture's quantiles are conformally calibrated on the backtest windows, and with
  ``calibrate_on="all"`` on the training windows too: one window per series is a small
  and recent sample, and whether that window was calmer or rougher than the next horizon
  decides the factor; windows from several origins average that out. On training windows
  the experts' missing levels are filled with offsets from the *other* fold of series, so
  no fill is in-sample. The factors stored in the artifact use every calibration window;
  the coverage and width reported for the mixture are cross-fitted (series split in two
  folds, each fold's backtest windows calibrated on the other fold's windows), so the
  reported numbers are on points the calibration did not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

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

__all__ = [
    "CalibrationWindows",
    "backtest_with_intervals",
    "cross_fitted_calibration",
    "training_mixture",
]

CalibrateOn = Literal["backtest", "all"]
#: Training windows filled and routed at once when they join the calibration.
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class CalibrationWindows:
    """Mixture forecasts on windows with known targets: ``point`` ``(N, H)``, ``quantiles``
    ``(N, H, Q)``, ``target`` ``(N, H)``, ``context`` ``(N, L)``, ``series_index`` ``(N,)``."""

    point: np.ndarray
    quantiles: np.ndarray
    target: np.ndarray
    context: np.ndarray
    series_index: np.ndarray

    def _arrays(self) -> list[np.ndarray]:
        return [getattr(self, field.name) for field in fields(self)]

    def where(self, mask: np.ndarray) -> CalibrationWindows:
        return CalibrationWindows(*(array[mask] for array in self._arrays()))

    def plus(self, other: CalibrationWindows | None) -> CalibrationWindows:
        if other is None:
            return self
        pairs = zip(self._arrays(), other._arrays(), strict=True)
        return CalibrationWindows(*(np.concatenate(pair) for pair in pairs))

    def factors(self, paired: bool) -> np.ndarray:
        """Conformal factors ``(H, Q)`` fitted on these windows (``fit_conformal``)."""
        return fit_conformal(self.point, self.quantiles, self.target, self.context, paired=paired)


def _folds(series_index: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the series fold of each window (series index parity)."""
    return np.asarray(series_index) % 2 == 1


def cross_fitted_calibration(
    point: np.ndarray,
    quantiles: np.ndarray,
    target: np.ndarray,
    context: np.ndarray,
    series_index: np.ndarray,
    paired: bool = False,
    extra: CalibrationWindows | None = None,
) -> np.ndarray:
    """Calibrated quantiles ``(N, H, Q)`` where each window's factors were fitted on the
    other fold of series (folds: series index parity), that fold's ``extra`` calibration
    windows included. With one fold only, in-sample."""
    held_out = CalibrationWindows(point, quantiles, target, context, series_index)
    everything = held_out.plus(extra)
    fold = _folds(series_index)
    if fold.all() or not fold.any():
        return apply_factors(point, quantiles, context, everything.factors(paired))
    calibrated = np.empty_like(quantiles, dtype=np.float64)
    every_fold = _folds(everything.series_index)
    for held, fit in ((fold, ~every_fold), (~fold, every_fold)):
        factors = everything.where(fit).factors(paired)
        calibrated[held] = apply_factors(point[held], quantiles[held], context[held], factors)
    return calibrated


def training_mixture(
    router: MoERouter,
    names: Sequence[str],
    context: np.ndarray,
    target: np.ndarray,
    series_index: np.ndarray,
    points: np.ndarray,
    quantiles: np.ndarray | torch.Tensor,
    rows: np.ndarray | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> CalibrationWindows:
    """The router's mixture on the (training) windows ``rows`` (default: all), for calibration.

    ``context`` ``(N, L)``, ``target`` ``(N, H)``, ``series_index`` ``(N,)``, ``points``
    ``(N, E, H)``, ``quantiles`` ``(N, E, H, Q)`` (raw cache). Missing expert levels are
    filled with residual offsets fitted on the other fold of series (never in-sample); a
    single fold fills from itself. Filled and routed ``chunk_rows`` windows at a time, so the
    extra memory is one chunk's, not a copy of every window's expert quantiles.
    """
    rows = np.arange(len(target)) if rows is None else np.asarray(rows)
    pred_length, n_levels = target.shape[1], len(QUANTILE_LEVELS)
    if rows.size == 0:
        empty = np.empty((0, pred_length))
        return CalibrationWindows(
            empty, np.empty((0, pred_length, n_levels)), empty, context[rows], series_index[rows]
        )
    fold = _folds(series_index[rows])
    if 0 < fold.sum() < fold.size:  # each fold filled by offsets fitted on the other
        fitted_on = {True: rows[~fold], False: rows[fold]}
    else:
        fitted_on = {bool(fold[0]): rows}
    models = {
        side: IntervalModel(
            expert_offsets=dict(
                zip(names, residual_offsets(target[fit], points[fit], context[fit]), strict=True)
            ),  # (E, H, Q) per name
            factors=np.ones((pred_length, n_levels)),
            levels=QUANTILE_LEVELS,
            n_calibration=0,
        )
        for side, fit in fitted_on.items()
    }
    mixed_points, mixed_quantiles = [], []
    for start in range(0, rows.size, chunk_rows):
        chunk = rows[start : start + chunk_rows]
        chunk_fold = fold[start : start + chunk_rows]
        raw = quantiles[chunk]
        raw = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        filled = np.empty(raw.shape, dtype=np.float32)
        for side, model in models.items():
            mine = chunk_fold == side
            filled[mine] = model.fill(names, points[chunk[mine]], raw[mine], context[chunk[mine]])
        output = router.route_cached(
            torch.from_numpy(np.ascontiguousarray(context[chunk])),
            torch.from_numpy(np.ascontiguousarray(points[chunk], np.float32)),
            torch.from_numpy(filled),
        )
        assert output.quantiles is not None
        mixed_points.append(output.point.numpy().astype(np.float64))
        mixed_quantiles.append(output.quantiles.numpy().astype(np.float64))
    return CalibrationWindows(
        np.concatenate(mixed_points),
        np.concatenate(mixed_quantiles),
        np.asarray(target[rows], np.float64),
        context[rows],
        np.asarray(series_index[rows]),
    )


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
    calibrate_on: CalibrateOn = "backtest",
) -> tuple[Scores, IntervalModel]:
    """Score experts and the router's mixture on the ``holdout`` windows, with intervals.

    ``context`` ``(N, L)``, ``target`` ``(N, H)``, ``series_index`` and ``season_length``
    ``(N,)``, ``points`` ``(N, E, H)``, ``quantiles`` ``(N, E, H, Q)`` (raw cache),
    ``holdout`` ``(N,)`` bool. Returns the scores (the mixture's quantiles cross-fitted)
    and the interval model for the artifact (factors fitted on every holdout window).
    ``paired``: one factor per interval (levels q and 1 - q), see ``fit_conformal``.
    ``calibrate_on``: "backtest" fits the factors on the ``holdout`` windows only, "all" on
    the training windows too (module docstring).
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
    extra = None
    if calibrate_on == "all" and train.any():
        extra = training_mixture(
            router,
            names,
            context,
            target,
            series_index,
            raw_points,
            quantiles,
            rows=np.flatnonzero(train),
        )
    backtest_windows = CalibrationWindows(
        point, mixed, held_target, held_context, series_index[rows]
    )
    calibration = backtest_windows.plus(extra)
    calibrated = cross_fitted_calibration(
        point, mixed, held_target, held_context, series_index[rows], paired, extra
    )
    model = IntervalModel(
        expert_offsets=model.expert_offsets,
        factors=calibration.factors(paired),
        levels=QUANTILE_LEVELS,
        n_calibration=int(calibration.point.shape[0]),
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
