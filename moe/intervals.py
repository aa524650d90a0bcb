"""Prediction intervals on every row: residual quantiles for experts that lack levels, and
split-conformal calibration of the mixture's quantiles.

Units: every offset is in units of the window's *interval scale* ``interval_scale(context)``:
the mean absolute one-step change inside the context (lag-1 naive MAE, NaN-aware), else the
mean |value|, else 1. It needs no season length, so the same scale is computed wherever a
window is seen (training, backtest, batch forecast, one expert call).

1. Residual quantiles (``residual_offsets``, ``fill_quantiles``, ``ResidualQuantileExpert``):
   on windows whose target is known (the retrain's training windows), the ``q``-quantile of
   ``(y - point) / scale`` per expert, horizon step and level. An expert's missing level
   (TimesFM and fracast have no 0.05/0.95, Time-MoE has no quantiles, a statistical fit on
   one point has none) becomes ``point + scale * offset``. Quantiles are then sorted along
   the level axis (native and filled levels may cross).
2. Conformal calibration (``fit_conformal``, ``apply_factors``): each mixture quantile's offset
   from the point, ``d = |q_level - point|`` (floored at ``MIN_OFFSET * scale``), is
   multiplied by a factor ``s[h, level]``, the split-conformal quantile of
   ``(y - point) / d`` (upper levels) or ``(point - y) / d`` (lower levels) at rank
   ``ceil((n + 1) * level') / n`` over ``n`` calibration windows, ``level'`` being ``q`` above
   the median and ``1 - q`` below. Then ``P(y <= q_level)`` is ``level`` on exchangeable
   windows. Steps with fewer than ``MIN_WINDOWS`` calibration windows share the factor
   pooled over all steps. The median (0.5) is left as it is.
3. Support (``floor_nonnegative``): a window whose observed context is never negative gets
   its point and quantiles floored at 0, after the calibration (the forecasts table, the
   API, ``predict_from_model`` and the backtest scores all apply it).

Shapes: ``context`` ``(N, L)``, ``target`` ``(N, H)``, ``points`` ``(N, E, H)``,
``quantiles`` ``(N, E, H, Q)`` (experts) or ``(N, H, Q)`` (mixture), levels ``(Q,)`` as in
``moe.experts.base.QUANTILE_LEVELS``; offsets ``(E, H, Q)``; factors ``(H, Q)``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from moe.experts.base import QUANTILE_LEVELS, Expert, ExpertForecast
from moe.metrics import positive_scale

__all__ = [
    "MIN_OFFSET",
    "MIN_WINDOWS",
    "interval_scale",
    "residual_offsets",
    "fill_quantiles",
    "fit_conformal",
    "apply_factors",
    "IntervalModel",
    "ResidualQuantileExpert",
    "nonnegative_rows",
    "floor_nonnegative",
]

#: Smallest quantile offset from the point, in interval-scale units (a zero-width model
#: interval would make the conformal ratio infinite).
MIN_OFFSET = 0.05
#: Fewest calibration windows per horizon step before the step uses the pooled factor.
MIN_WINDOWS = 20


def interval_scale(context: np.ndarray) -> np.ndarray:
    """``(N, L)`` -> ``(N,)`` positive: lag-1 naive MAE, else mean |value|, else 1
    (``moe.metrics.positive_scale`` at lag 1)."""
    return positive_scale(context, 1)


def nonnegative_rows(context: np.ndarray) -> np.ndarray:
    """``(N, L)`` -> ``(N,)`` bool: rows with at least one observed value and none below 0."""
    observed = np.isfinite(context)
    below = np.where(observed, context, 0.0) < 0
    return observed.any(axis=1) & ~below.any(axis=1)


def floor_nonnegative(values: np.ndarray, context: np.ndarray) -> np.ndarray:
    """``values`` ``(N, ...)`` (points or quantiles) floored at 0 on ``nonnegative_rows``.

    Why: a mixture of additive models (and its calibrated lower quantiles) can go below 0
    for a series that never has (sales, counts, visitors: 26% of the demo's M3 series got
    a negative q05). On such a series a value below 0 is never closer to a non-negative
    target, so flooring cannot raise an absolute error nor uncover a point. NaN stays NaN.
    """
    rows = nonnegative_rows(context).reshape(-1, *([1] * (values.ndim - 1)))
    with np.errstate(invalid="ignore"):
        return np.where(rows & (values < 0), 0.0, values)


def _empirical_quantile(values: np.ndarray, level: float, axis: int) -> np.ndarray:
    """NaN-aware quantile (linear interpolation); all-NaN slices give NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        return np.nanquantile(values, level, axis=axis)


def residual_offsets(
    target: np.ndarray,
    points: np.ndarray,
    context: np.ndarray,
    levels: Sequence[float] = QUANTILE_LEVELS,
) -> np.ndarray:
    """``(E, H, Q)`` quantiles of each expert's scaled residuals ``(y - point) / scale``.

    ``target`` ``(N, H)``, ``points`` ``(N, E, H)``, ``context`` ``(N, L)``; NaN where a
    step never has a finite residual.
    """
    scale = interval_scale(context)[:, None, None]  # (N, 1, 1)
    residuals = (np.asarray(target, np.float64)[:, None, :] - points) / scale  # (N, E, H)
    return np.stack([_empirical_quantile(residuals, q, axis=0) for q in levels], axis=-1)


def fill_quantiles(
    points: np.ndarray, quantiles: np.ndarray, context: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Experts' quantiles ``(N, E, H, Q)`` with every NaN entry that has a finite point and a
    finite offset replaced by ``point + scale * offset``, sorted along levels.

    ``points`` ``(N, E, H)``, ``offsets`` ``(E, H, Q)`` (``residual_offsets``). The input
    is not modified.
    """
    scale = interval_scale(context)[:, None, None, None]  # (N, 1, 1, 1)
    filled_values = points[..., None] + scale * offsets[None]  # (N, E, H, Q)
    missing = np.isnan(quantiles) & np.isfinite(filled_values)
    filled = np.where(missing, filled_values, quantiles)
    return np.sort(filled, axis=-1)  # NaN (still missing) sorts last


def _rank_level(level: float, n: int) -> float:
    """The split-conformal rank as a quantile level: ``ceil((n + 1) * level) / n`` capped at 1."""
    return min(1.0, math.ceil((n + 1) * level) / n)


def _factor_table(
    scores: np.ndarray, coverage: float, min_windows: int, pred_length: int
) -> np.ndarray:
    """``(H,)``: per step the split-conformal ``coverage`` quantile of ``scores`` ``(N, H)``;
    steps with fewer than ``min_windows`` finite scores take the quantile pooled over steps."""
    valid = np.isfinite(scores)
    pooled_n = int(valid.sum())
    pooled = (
        _empirical_quantile(scores[valid], _rank_level(coverage, pooled_n), axis=0)
        if pooled_n
        else 1.0
    )
    table = np.full(pred_length, float(pooled))
    for step in range(pred_length):
        column = scores[valid[:, step], step]
        if column.size >= min_windows:
            table[step] = _empirical_quantile(column, _rank_level(coverage, column.size), axis=0)
    return table


def fit_conformal(
    point: np.ndarray,
    quantiles: np.ndarray,
    target: np.ndarray,
    context: np.ndarray,
    levels: Sequence[float] = QUANTILE_LEVELS,
    min_windows: int = MIN_WINDOWS,
    paired: bool = False,
) -> np.ndarray:
    """Factors ``(H, Q)`` that scale each quantile's offset from the point (module docstring).

    ``point`` ``(N, H)``, ``quantiles`` ``(N, H, Q)``, ``target`` ``(N, H)``, ``context``
    ``(N, L)``. Factor 1 at the median and where nothing can be fitted.

    ``paired``: levels ``q`` and ``1 - q`` share one factor, the conformal quantile at
    ``1 - 2q`` of ``max((point - y) / d_q, (y - point) / d_{1-q})`` (scaled conformalised
    quantile regression): the interval keeps the mixture's own asymmetry instead of
    learning one from the calibration windows.
    """
    scale = interval_scale(context)[:, None]  # (N, 1)
    target = np.asarray(target, np.float64)
    pred_length = point.shape[1]
    factors = np.ones((pred_length, len(levels)))

    def ratio(index: int) -> np.ndarray:  # (N, H), NaN where y, point or quantile is missing
        offset = np.maximum(np.abs(quantiles[:, :, index] - point), MIN_OFFSET * scale)
        signed = (target - point) if levels[index] > 0.5 else (point - target)
        return signed / offset

    for index, level in enumerate(levels):
        if level == 0.5:
            continue
        partner = next(
            (j for j, other in enumerate(levels) if abs(other - (1 - level)) < 1e-9), None
        )
        if paired and partner is not None:
            if level > 0.5:
                continue  # set together with its lower partner
            scores = np.maximum(ratio(index), ratio(partner))
            table = _factor_table(scores, 1.0 - 2.0 * level, min_windows, pred_length)
            factors[:, index] = table
            factors[:, partner] = table
            continue
        coverage = level if level > 0.5 else 1.0 - level
        factors[:, index] = _factor_table(ratio(index), coverage, min_windows, pred_length)
    return factors


@dataclass(frozen=True)
class IntervalModel:
    """What an artifact stores to put calibrated intervals on every row.

    ``expert_offsets``: per expert name, ``(H, Q)`` residual quantile offsets;
    ``factors``: ``(H, Q)`` conformal factors of the mixture; ``levels``: ``(Q,)``;
    ``n_calibration``: windows the factors were fitted on.
    """

    expert_offsets: dict[str, np.ndarray]
    factors: np.ndarray
    levels: tuple[float, ...]
    n_calibration: int

    def offsets_for(self, names: Sequence[str]) -> np.ndarray:
        """``(E, H, Q)`` offsets in the order of ``names`` (NaN for unknown experts)."""
        pred_length, n_levels = self.factors.shape
        empty = np.full((pred_length, n_levels), np.nan)
        return np.stack([self.expert_offsets.get(name, empty) for name in names])

    def fill(
        self, names: Sequence[str], points: np.ndarray, quantiles: np.ndarray, context: np.ndarray
    ) -> np.ndarray:
        """``fill_quantiles`` with the offsets of experts ``names`` (the ``E`` axis)."""
        return fill_quantiles(points, quantiles, context, self.offsets_for(names))

    def apply(self, point: np.ndarray, quantiles: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Calibrated mixture quantiles ``(N, H, Q)`` from ``point`` ``(N, H)``,
        ``quantiles`` ``(N, H, Q)`` and ``context`` ``(N, L)``."""
        return apply_factors(point, quantiles, context, self.factors, self.levels)

    def to_plain(self) -> dict[str, object]:
        """Plain data for the artifact (tensors and lists; ``weights_only`` loads it)."""
        return {
            "method": "residual_quantiles+split_conformal_offset_scaling",
            "scale": "lag-1 naive MAE of the context",
            "levels": [float(q) for q in self.levels],
            "expert_offsets": {
                name: torch.from_numpy(np.ascontiguousarray(offsets, np.float32))
                for name, offsets in self.expert_offsets.items()
            },
            "factors": torch.from_numpy(np.ascontiguousarray(self.factors, np.float32)),
            "n_calibration": int(self.n_calibration),
        }

    @classmethod
    def from_plain(cls, plain: dict[str, object]) -> IntervalModel | None:
        """The model stored by ``to_plain``; None for an artifact without intervals."""
        if not plain:
            return None
        offsets = plain["expert_offsets"]
        factors = plain["factors"]
        assert isinstance(offsets, dict) and isinstance(factors, torch.Tensor)
        levels = plain["levels"]
        assert isinstance(levels, list)
        n_calibration = plain["n_calibration"]
        assert isinstance(n_calibration, int)
        return cls(
            expert_offsets={str(name): value.double().numpy() for name, value in offsets.items()},
            factors=factors.double().numpy(),
            levels=tuple(float(q) for q in levels),
            n_calibration=n_calibration,
        )


def apply_factors(
    point: np.ndarray,
    quantiles: np.ndarray,
    context: np.ndarray,
    factors: np.ndarray,
    levels: Sequence[float] = QUANTILE_LEVELS,
) -> np.ndarray:
    """Each quantile's offset from ``point`` scaled by ``factors`` ``(H, Q)``; sorted.

    ``point`` ``(N, H)``, ``quantiles`` ``(N, H, Q)``, ``context`` ``(N, L)``; offsets are
    floored at ``MIN_OFFSET`` interval scales exactly as in ``fit_conformal``.
    """
    scale = interval_scale(context)[:, None]  # (N, 1)
    pred_length = point.shape[1]
    calibrated = np.array(quantiles, np.float64, copy=True)
    for index, level in enumerate(levels):
        if level == 0.5:
            continue
        offset = np.maximum(np.abs(quantiles[:, :, index] - point), MIN_OFFSET * scale)
        sign = 1.0 if level > 0.5 else -1.0
        calibrated[:, :, index] = point + sign * factors[None, :pred_length, index] * offset
    return np.sort(calibrated, axis=-1)


class ResidualQuantileExpert:
    """An expert whose missing quantile levels are filled from its residual offsets.

    Wraps ``inner`` (never passed to the cache: the cache holds raw expert outputs);
    ``offsets`` ``(H, Q)`` from ``residual_offsets``. Same name as the inner expert.
    """

    def __init__(self, inner: Expert, offsets: np.ndarray) -> None:
        self.inner = inner
        self.name = inner.name
        self.offsets = np.asarray(offsets, np.float64)
        self.capabilities = replace(inner.capabilities, quantile_levels=QUANTILE_LEVELS)
        digest = hashlib.blake2b(self.offsets.tobytes(), digest_size=6).hexdigest()
        self._key = f"{inner.cache_key}|residual_quantiles={digest}"

    @property
    def cache_key(self) -> str:
        return self._key

    def forecast(self, context: torch.Tensor, pred_length: int) -> ExpertForecast:
        """The inner forecast with NaN quantiles filled (``point`` unchanged)."""
        result = self.inner.forecast(context, pred_length)
        point = result.point.detach().cpu().double().numpy()  # (B, H)
        quantiles = (
            np.full((*point.shape, len(QUANTILE_LEVELS)), np.nan)
            if result.quantiles is None
            else result.quantiles.detach().cpu().double().numpy()
        )
        offsets = self.offsets
        if pred_length > offsets.shape[0]:  # beyond the fitted horizon: the last step's offsets
            tail = np.repeat(offsets[-1:], pred_length - offsets.shape[0], axis=0)
            offsets = np.concatenate([offsets, tail])
        rows = context.detach().cpu().double().numpy()
        filled = fill_quantiles(
            point[:, None], quantiles[:, None], rows, offsets[None, :pred_length]
        )[:, 0]
        return ExpertForecast(
            point=result.point,
            quantiles=torch.from_numpy(filled.astype(np.float32)).to(result.point.device),
        )
