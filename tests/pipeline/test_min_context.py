"""A long input_length with a shorter min_context: short series keep their windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from moe.artifact import load_artifact
from moe.seed.api import predict_from_model
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
from pipeline.training_data import prepare_windows
from storage import Store, ingest_jsonl
from storage.series import load_series
from storage.sql import query
from tests.pipeline.conftest import FAST_RETRAIN, write_series


def _mixed_lengths(store: Store, tmp_path: Path) -> None:
    """12 series of 72 points and 12 of 36 (other ids), in one store."""
    long_file = write_series(tmp_path / "long.jsonl", n_series=12, length=72, seed=1)
    short_file = write_series(tmp_path / "short.jsonl", n_series=12, length=36, seed=2)
    text = short_file.read_text().replace('"series_id": "s', '"series_id": "short')
    short_file.write_text(text)
    ingest_jsonl(store, str(long_file))
    ingest_jsonl(store, str(short_file))


def _config(**overrides: object) -> RetrainConfig:
    base = {**FAST_RETRAIN, "input_length": 60, "forecast_after": False}
    return RetrainConfig.model_validate({**base, **overrides})


def test_min_context_keeps_short_series_with_padded_contexts(store: Store, tmp_path: Path) -> None:
    """Guards that min_context admits windows shorter than input_length, NaN-padded on the
    left with exactly the points before the target, and that without it they are dropped."""
    _mixed_lengths(store, tmp_path)
    series, full_only = prepare_windows(store, _config())
    assert not any(series.series_id[i].startswith("short") for i in full_only.series_index)

    series, windows = prepare_windows(store, _config(min_context=18))
    values = dict(zip(series.series_id, series.values, strict=True))
    short_rows = [
        row
        for row in range(len(windows))
        if series.series_id[windows.series_index[row]].startswith("short")
    ]
    # 36 points, 6 ahead, at least 18 before the target: origins 30, 24, 18 (stride 6).
    assert len(short_rows) == 12 * 3
    for row in short_rows:
        history = np.asarray(values[series.series_id[windows.series_index[row]]], np.float32)
        origin = int(windows.origin[row])
        context = windows.context[row]
        assert np.isnan(context[: 60 - origin]).all()
        np.testing.assert_array_equal(context[60 - origin :], history[:origin])
        np.testing.assert_array_equal(windows.target[row], history[origin : origin + 6])


def test_retrain_and_forecast_with_padded_contexts(store: Store, tmp_path: Path) -> None:
    """Guards the whole path with real offline experts: NaN-padded windows are cached,
    the gate trains on them, and every series (short ones too) gets finite forecasts."""
    _mixed_lengths(store, tmp_path)
    result = retrain(store, _config(min_context=18))
    assert result.promoted
    run = batch_forecast(store, ForecastConfig())
    assert run.n_series == 24 and run.n_rows == 24 * 6
    points = query(store, "SELECT point FROM forecasts WHERE run_id = $1", [run.run_id])
    assert np.isfinite(np.asarray(points.column(0).to_pylist(), float)).all()
    assert len(load_series(store).series_id) == 24
    # The seed's predict takes the registered model and a short series as the batch does.
    path = Path(result.artifact_path)
    assert load_artifact(path).train_config["windows"]["min_context"] == 18
    forecast = predict_from_model(path, [float(v % 7) for v in range(20)], 60)
    assert forecast.shape == (1, 6) and torch.isfinite(forecast).all()
    with pytest.raises(ValueError, match="at least min_context=18"):
        predict_from_model(path, [1.0] * 17, 60)


def test_min_context_longer_than_input_length_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"min_context \(61\) must be at most input_length"):
        _config(min_context=61)


def test_default_min_context_is_capped_by_input_length() -> None:
    """Guards the defaults: a long context, windows from 36 points, never more than L."""
    assert RetrainConfig().input_length == 120
    assert RetrainConfig().window_min_context == 36
    assert RetrainConfig(input_length=24).window_min_context == 24
    assert RetrainConfig(input_length=60, min_context=12).window_min_context == 12
