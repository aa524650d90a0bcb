"""Residual quantile fills and split-conformal calibration (moe.intervals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moe.artifact import GateArtifact, load_artifact, save_artifact
from moe.experts.base import QUANTILE_LEVELS, ExpertForecast
from moe.experts.fake import FakeForecaster
from moe.intervals import (
    IntervalModel,
    ResidualQuantileExpert,
    apply_factors,
    fill_quantiles,
    fit_conformal,
    floor_nonnegative,
    interval_scale,
    nonnegative_rows,
    residual_offsets,
)
from tests.experts.contract import assert_expert_contract

Q05, Q95 = QUANTILE_LEVELS.index(0.05), QUANTILE_LEVELS.index(0.95)


def _noisy(n: int, horizon: int, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Contexts with lag-1 naive MAE exactly 1 and targets point(=0) + N(0, sigma)."""
    rng = np.random.default_rng(seed)
    context = np.tile(np.array([0.0, 1.0] * 6), (n, 1))  # |diff| = 1 everywhere
    target = sigma * rng.standard_normal((n, horizon))
    return context, target


def test_interval_scale_falls_back_when_flat_or_missing() -> None:
    """Guards the scale: naive MAE, then mean |value| for flat rows, then 1 for empty rows."""
    context = np.array([[1.0, 3.0, 1.0], [5.0, 5.0, 5.0], [np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(interval_scale(context), [2.0, 5.0, 1.0])


def test_residual_offsets_fill_only_missing_levels() -> None:
    """Guards the fill: an expert without 0.05/0.95 (or without quantiles) gets residual
    quantiles there; native levels are kept."""
    context, target = _noisy(4000, 3, 2.0, 0)
    points = np.zeros((4000, 2, 3))
    offsets = residual_offsets(target, points, context)  # (E, H, Q)
    np.testing.assert_allclose(offsets[:, :, Q95], 2.0 * 1.645, rtol=0.06)
    quantiles = np.full((5, 2, 3, len(QUANTILE_LEVELS)), np.nan)
    native = np.array([q - 0.5 for q in QUANTILE_LEVELS])
    quantiles[:, 0] = native  # expert 0: every level but 0.05 and 0.95
    quantiles[:, 0, :, [Q05, Q95]] = np.nan
    filled = fill_quantiles(np.zeros((5, 2, 3)), quantiles, context[:5], offsets)
    assert not np.isnan(filled).any()
    kept = [i for i in range(len(QUANTILE_LEVELS)) if i not in (Q05, Q95)]
    np.testing.assert_allclose(filled[:, 0][..., kept], np.broadcast_to(native[kept], (5, 3, 9)))
    assert (np.diff(filled, axis=-1) >= 0).all()
    assert np.isnan(quantiles[:, 0, :, Q05]).all()  # the caller's array is untouched


def test_conformal_factors_restore_coverage_on_fresh_windows() -> None:
    """Guards calibration: intervals 2x too narrow are widened to ~90% on unseen windows."""
    context, target = _noisy(2000, 4, 2.0, 1)
    point = np.zeros_like(target)
    narrow = np.broadcast_to(
        np.array([1.645 * (q - 0.5) / 0.45 for q in QUANTILE_LEVELS]), (*target.shape, 11)
    ).copy()  # sigma 1 instead of 2 (0.05/0.95 at -+1.645)
    factors = fit_conformal(point, narrow, target, context)
    np.testing.assert_allclose(factors[:, Q95], 2.0, rtol=0.1)
    fresh_context, fresh = _noisy(4000, 4, 2.0, 2)
    calibrated = apply_factors(
        np.zeros_like(fresh), narrow[:1].repeat(4000, 0), fresh_context, factors
    )
    inside = (fresh >= calibrated[..., Q05]) & (fresh <= calibrated[..., Q95])
    assert 0.87 <= inside.mean() <= 0.93
    raw_inside = (fresh >= narrow[0, :, Q05]) & (fresh <= narrow[0, :, Q95])
    assert raw_inside.mean() < 0.7  # the uncalibrated interval was clearly too narrow


def test_few_windows_use_the_pooled_factor() -> None:
    """Guards small calibration sets: steps below MIN_WINDOWS share one pooled factor."""
    context, target = _noisy(10, 3, 1.0, 3)
    point = np.zeros_like(target)
    quantiles = np.broadcast_to(np.array(QUANTILE_LEVELS) - 0.5, (10, 3, 11)).copy()
    factors = fit_conformal(point, quantiles, target, context)
    assert np.allclose(factors, factors[:1])  # identical across steps
    assert np.isfinite(factors).all()


class _PointOnly(FakeForecaster):
    """A fake without quantiles (like Time-MoE)."""

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        return ExpertForecast(point=super().forecast(context, horizon).point, quantiles=None)


def test_residual_quantile_expert_keeps_the_contract_and_fills_every_level() -> None:
    """Guards the wrapper used at forecast time: protocol kept, every level finite."""
    offsets = np.tile(np.array(QUANTILE_LEVELS) - 0.5, (6, 1))  # (H, Q)
    wrapped = ResidualQuantileExpert(_PointOnly("pointonly"), offsets)
    result = assert_expert_contract(wrapped, input_length=16, horizon=6)
    assert result.quantiles is not None
    assert torch.isfinite(result.quantiles[:4]).all()
    assert (
        wrapped.cache_key.startswith("fake:pointonly") and "residual_quantiles" in wrapped.cache_key
    )


def test_interval_model_round_trips_through_a_weights_only_artifact(tmp_path: Path) -> None:
    """Guards the artifact: intervals are plain data that torch.load(weights_only=True) reads."""
    model = IntervalModel(
        expert_offsets={"a": np.ones((3, 11)), "b": np.full((3, 11), np.nan)},
        factors=np.full((3, 11), 1.5),
        levels=QUANTILE_LEVELS,
        n_calibration=42,
    )
    artifact = GateArtifact(
        gating_state={"linear.weight": torch.zeros(2, 4), "linear.bias": torch.zeros(2)},
        expert_keys=["a", "b"],
        input_length=4,
        pred_length=3,
        gate={"kind": "linear"},
        experts=[{"name": name, "cache_key": name, "config": None} for name in ("a", "b")],
        intervals=model.to_plain(),
    )
    path = save_artifact(artifact, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["intervals"]["n_calibration"] == 42
    back = IntervalModel.from_plain(load_artifact(path).intervals)
    assert back is not None and back.n_calibration == 42
    np.testing.assert_allclose(back.factors, 1.5)
    assert np.isnan(back.expert_offsets["b"]).all()
    assert IntervalModel.from_plain({}) is None


def test_paired_calibration_keeps_the_interval_asymmetry() -> None:
    """Guards 'paired' mode: q and 1-q share one factor, coverage of the pair is ~90%, and a
    one-sided calibration error (all residuals positive) is not learned as a shift."""
    context, target = _noisy(2000, 2, 2.0, 4)
    point = np.zeros_like(target)
    narrow = np.broadcast_to(
        np.array([1.645 * (q - 0.5) / 0.45 for q in QUANTILE_LEVELS]), (*target.shape, 11)
    ).copy()
    factors = fit_conformal(point, narrow, target, context, paired=True)
    np.testing.assert_allclose(factors[:, Q05], factors[:, Q95])
    calibrated = apply_factors(point, narrow, context, factors)
    inside = (target >= calibrated[..., Q05]) & (target <= calibrated[..., Q95])
    assert 0.88 <= inside.mean() <= 0.92  # in-sample, so close to the nominal level
    per_level = fit_conformal(point, narrow, np.abs(target), context)
    paired = fit_conformal(point, narrow, np.abs(target), context, paired=True)
    assert per_level[0, Q05] < 0 < paired[0, Q05]  # per-level moves q05 above the point


def test_floor_nonnegative_only_touches_never_negative_contexts() -> None:
    """Guards the floor: rows whose observed context has no value below 0 get no negative
    point or quantile; a row that was ever negative, or has nothing observed, is left as
    it is; NaN stays NaN; the input is not modified."""
    nan = np.nan
    context = np.array(
        [[nan, 0.0, 3.0], [2.0, -1.0, 4.0], [nan, nan, nan], [5.0, 6.0, 7.0]], np.float32
    )
    assert nonnegative_rows(context).tolist() == [True, False, False, True]
    quantiles = np.full((4, 2, 3), -2.0)  # (N, H, Q)
    quantiles[3, 1] = [nan, 1.0, 2.0]
    floored = floor_nonnegative(quantiles, context)
    assert (floored[0] == 0.0).all() and (floored[1] == -2.0).all() and (floored[2] == -2.0).all()
    np.testing.assert_array_equal(floored[3, 1], [nan, 1.0, 2.0])
    assert (quantiles[0] == -2.0).all()
    points = np.array([[-1.0, 2.0]] * 4)  # (N, H)
    assert floor_nonnegative(points, context)[:, 0].tolist() == [0.0, -1.0, -1.0, 0.0]
