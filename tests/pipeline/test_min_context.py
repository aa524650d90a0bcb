"""A long input_length with a shorter min_context: short series keep their windows."""

from __future__ import annotations

import json
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
    series, full_only = prepare_windows(store, _config(min_context=36))
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


def test_default_min_context_gives_short_series_one_training_window(
    store: Store, tmp_path: Path
) -> None:
    """Guards the adaptive default: a 36-point series, too short for a training window at
    36 points before the backtest window, gets one with the 24 it has; long series keep
    windows of at least 36 points."""
    _mixed_lengths(store, tmp_path)
    series, windows = prepare_windows(store, _config())
    is_short = np.array([series.series_id[i].startswith("short") for i in windows.series_index])
    short = windows.select(is_short)
    assert len(short) == 12 * 2 and short.is_holdout.sum() == 12  # one train, one backtest
    assert sorted(set(short.origin.tolist())) == [24, 30]  # 24 points before the older
    long = windows.select(~is_short)
    assert (long.origin >= 36).all() and len(long) == 12 * 4


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
    """Guards the defaults: a long context, windows from 36 points (8 for a short series),
    never more than L; a min_context that is set is used as it is."""
    assert RetrainConfig().input_length == 120
    assert RetrainConfig().window_min_context == 36
    assert RetrainConfig().shortest_window_context == 8
    assert RetrainConfig(input_length=24).window_min_context == 24
    assert RetrainConfig(input_length=6).shortest_window_context == 6
    config = RetrainConfig(input_length=60, min_context=12)
    assert config.window_min_context == config.shortest_window_context == 12


def _yearly(path: Path, n_series: int = 40) -> Path:
    """Short yearly series (13-30 points, freq YS), as in M3 or Tourism yearly."""
    rng = np.random.default_rng(7)
    with open(path, "w") as handle:
        for index in range(n_series):
            length = int(rng.integers(13, 31))
            trend = rng.normal(0.03, 0.02)
            values = 100 * np.exp(trend * np.arange(length) + 0.05 * rng.standard_normal(length))
            record = {"series_id": f"y{index:03d}", "start": "1980-01-01", "freq": "YS"}
            handle.write(json.dumps({**record, "sequence": values.round(3).tolist()}) + "\n")
    return path


def test_a_store_of_short_yearly_series_retrains_and_forecasts_at_the_defaults(
    store: Store, tmp_path: Path
) -> None:
    """Guards the short-series path end to end at the default windowing (input_length 120,
    min_context None): before the adaptive default no series had a training window and
    the retrain refused the store. Every series is forecast, and the seed path trains on
    the same file."""
    path = _yearly(tmp_path / "yearly.jsonl")
    config = RetrainConfig(
        jsonl_paths=[str(path)],
        experts=["seasonal_naive", "autoets", "autotheta"],
        pred_length=4,
        forecast_after=False,
    )
    assert config.input_length == 120 and config.min_context is None
    ingest_jsonl(store, str(path))
    series, windows = prepare_windows(store, config)
    trained = windows.select(~windows.is_holdout)
    assert len(set(trained.series_index.tolist())) >= 30  # 13 + 4 + 4 = 21+ points train
    assert windows.season_length is not None and set(windows.season_length.tolist()) == {1}
    result = retrain(store, config)
    assert result.artifact_path and np.isfinite(result.scores.overall()["mixture"]["mase"])
    run = batch_forecast(store, ForecastConfig())
    assert run.n_series == 40 and run.n_rows == 40 * 4
    points = query(store, "SELECT point FROM forecasts WHERE run_id = $1", [run.run_id])
    assert np.isfinite(np.asarray(points.column(0).to_pylist(), float)).all()
    assert load_artifact(Path(result.artifact_path)).train_config["windows"]["min_context"] == 8

    from moe.seed.api import train_and_save

    artifact = train_and_save(
        path, 120, 4, tmp_path / "seed.pt", experts=["seasonal_naive", "autoets", "autotheta"]
    )
    assert artifact.train_config["windows"]["min_context"] == 8
    forecast = predict_from_model(tmp_path / "seed.pt", series.values[0], 120)
    assert forecast.shape == (1, 4) and torch.isfinite(forecast).all()
