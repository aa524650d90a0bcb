"""Intervals on every forecast row and interval metrics in the backtest and leaderboard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.forecast
from moe.artifact import load_artifact
from moe.experts.base import ExpertForecast
from moe.experts.fake import FakeForecaster
from moe.intervals import IntervalModel
from moe.model_file import load_router
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast, last_contexts, route_by_season
from pipeline.retrain import retrain
from storage import Store, ingest_jsonl
from storage.schemas import QUANTILE_COLUMNS
from storage.series import load_series
from storage.sql import query


class _PointOnly(FakeForecaster):
    """A fake without quantiles (like Time-MoE)."""

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        return ExpertForecast(point=super().forecast(context, horizon).point, quantiles=None)


def _point_only_experts() -> list[FakeForecaster]:
    return [
        _PointOnly("a", factor=1.0),
        _PointOnly("b", factor=0.9, offset=1.0),
        _PointOnly("c", factor=1.1),
    ]


def _config(series_file: Path, **overrides: object) -> RetrainConfig:
    """24 series, 6-step horizon, up to 4 windows each (1 backtest), a quick gate fit."""
    settings: dict[str, object] = {
        "jsonl_paths": [str(series_file)],
        "experts": ["seasonal_naive", "autoets", "autotheta"],
        "input_length": 24,
        "pred_length": 6,
        "max_windows_per_series": 4,
        "train": {"epochs": 2, "batch_size": 32},
    }
    return RetrainConfig.model_validate({**settings, **overrides})


def test_every_row_gets_calibrated_intervals(store: Store, series_file: Path) -> None:
    """Guards item 7: experts without quantiles still give q05..q95 on every forecast row,
    the artifact carries the calibration, the leaderboard reports coverage and width."""
    experts = _point_only_experts()
    result = retrain(store, _config(series_file), experts=experts)
    artifact = load_artifact(result.artifact_path)
    intervals = IntervalModel.from_plain(artifact.intervals)
    assert intervals is not None
    # calibrated on every window with a target: the 24 backtest windows and the training ones
    assert intervals.n_calibration == 24 + artifact.metrics["n_train"]
    assert set(intervals.expert_offsets) == {"a", "b", "c"}
    run = batch_forecast(store, ForecastConfig(), experts=experts)
    columns = ", ".join(QUANTILE_COLUMNS)
    table = query(store, f"SELECT point, {columns} FROM forecasts WHERE run_id = $1", [run.run_id])
    values = np.array([table.column(name).to_pylist() for name in QUANTILE_COLUMNS], float)
    assert table.num_rows == 24 * 6 and np.isfinite(values).all()
    assert (np.diff(values, axis=0) >= 0).all()  # levels in order on every row
    board = query(
        store,
        "SELECT model, coverage_90, width_90 FROM leaderboard WHERE model = 'mixture'",
    ).to_pylist()
    assert len(board) == 1 and 0.0 <= board[0]["coverage_90"] <= 1.0
    assert board[0]["width_90"] > 0
    per_expert = query(
        store,
        "SELECT coverage_90 FROM backtest_metrics WHERE model = 'a' AND series_id IS NULL",
    ).column(0)
    assert per_expert[0].as_py() is not None  # filled from residuals, so measurable


def test_never_negative_series_get_no_negative_forecasts(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the floor at 0 (moe.intervals.floor_nonnegative) in the forecasts table: series
    that were never negative get no negative point or bound, although the mixture without
    the floor goes below 0 on them; a series with a negative value keeps its forecasts."""
    rng = np.random.default_rng(0)
    path = tmp_path / "near_zero.jsonl"
    with open(path, "w") as handle:
        for index in range(12):
            values = 3.0 + np.abs(rng.standard_normal(48)) * (1 + index % 3)
            if index == 0:
                values[-10] = -1.0  # negative inside its context: never floored
            handle.write(f'{{"series_id": "z{index:02d}", "sequence": {values.tolist()}}}\n')
    ingest_jsonl(store, str(path))
    experts = [_PointOnly("low", offset=-6.0), _PointOnly("high", offset=1.0)]
    experts.append(_PointOnly("flat", factor=0.5))
    config = RetrainConfig(
        experts=["seasonal_naive", "autoets", "autotheta"],
        input_length=24,
        pred_length=6,
        max_windows_per_series=4,
        season_length=1,
        forecast_after=False,
        train={"epochs": 2, "batch_size": 32},  # type: ignore[arg-type]
    )
    result = retrain(store, config, experts=experts)
    run = batch_forecast(store, ForecastConfig(), experts=experts)
    rows = query(
        store,
        "SELECT series_id, step, point, q05 FROM forecasts WHERE run_id = $1 "
        "ORDER BY series_id, step",
        [run.run_id],
    ).to_pydict()
    point = np.asarray(rows["point"]).reshape(12, 6)
    q05 = np.asarray(rows["q05"]).reshape(12, 6)
    assert (point[1:] >= 0).all() and (q05[1:] >= 0).all()

    artifact = load_artifact(result.artifact_path)
    series = load_series(store)
    assert list(series.series_id) == sorted(series.series_id)
    contexts, _ = last_contexts(series, 24)
    router = load_router(artifact, experts=experts)
    intervals = IntervalModel.from_plain(artifact.intervals)
    monkeypatch.setattr(pipeline.forecast, "floor_nonnegative", lambda values, _: values)
    raw_point, raw_q, _, _ = route_by_season(router, contexts, None, "cpu", intervals)
    assert (raw_q[1:, :, 0] < 0).any()  # without the floor these rows go below 0
    # z00 (negative inside its context) is stored exactly as routed, unfloored.
    np.testing.assert_allclose(point[0], raw_point[0], rtol=1e-6)
    np.testing.assert_allclose(q05[0], raw_q[0, :, 0], rtol=1e-6)


def test_retrain_calibrates_on_every_window_when_asked(store: Store, series_file: Path) -> None:
    """``interval_calibration_windows='all'``: the artifact's factors come from the training
    windows too (more calibration windows, other factors), the forecasts keep their points."""
    results = {}
    for windows in ("backtest", "all"):
        config = _config(series_file, interval_calibration_windows=windows)
        result = retrain(store, config, experts=_point_only_experts())
        intervals = IntervalModel.from_plain(load_artifact(result.artifact_path).intervals)
        assert intervals is not None
        results[windows] = (result, intervals)
    backtest, everything = results["backtest"][1], results["all"][1]
    assert backtest.n_calibration == 24
    assert everything.n_calibration > 24 * 2  # 24 series, up to 3 training windows each
    assert not np.allclose(backtest.factors, everything.factors)
    scores = [results[w][0].scores.overall()["mixture"]["mase"] for w in ("backtest", "all")]
    assert scores[0] == scores[1]  # intervals only: the points are the same
