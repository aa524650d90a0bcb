"""Intervals on every forecast row and interval metrics in the backtest and leaderboard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moe.artifact import load_artifact
from moe.experts.base import ExpertForecast
from moe.experts.fake import FakeForecaster
from moe.intervals import IntervalModel
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
from storage import Store
from storage.schemas import QUANTILE_COLUMNS
from storage.sql import query


class _PointOnly(FakeForecaster):
    """A fake without quantiles (like Time-MoE)."""

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        return ExpertForecast(point=super().forecast(context, horizon).point, quantiles=None)


def test_every_row_gets_calibrated_intervals(store: Store, series_file: Path) -> None:
    """Guards item 7: experts without quantiles still give q05..q95 on every forecast row,
    the artifact carries the calibration, the leaderboard reports coverage and width."""
    experts = [_PointOnly("a", factor=1.0), _PointOnly("b", factor=0.9, offset=1.0)]
    experts.append(_PointOnly("c", factor=1.1))
    config = RetrainConfig(
        jsonl_paths=[str(series_file)],
        experts=["seasonal_naive", "autoets", "autotheta"],
        input_length=24,
        pred_length=6,
        max_windows_per_series=4,
        train={"epochs": 2, "batch_size": 32},  # type: ignore[arg-type]
    )
    result = retrain(store, config, experts=experts)
    artifact = load_artifact(result.artifact_path)
    intervals = IntervalModel.from_plain(artifact.intervals)
    assert intervals is not None and intervals.n_calibration == 24
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
