"""The trained global expert: training, versioned cache key, checkpoint loading, retrain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moe.artifact import load_artifact
from moe.data import Windows
from moe.experts.base import ExpertConfig, ExpertLoadError
from moe.experts.global_mlp import GlobalMLPConfig, save_global_mlp, train_global_mlp
from moe.experts.registry import build_expert
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
from pipeline.training_data import global_expert_windows
from storage import Store


def _sine_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of sines with random phase, level and scale: (n, 24) -> (n, 6)."""
    rng = np.random.default_rng(seed)
    t = np.arange(30)[None, :] + rng.integers(0, 12, size=(n, 1))
    level = rng.uniform(-100, 1000, size=(n, 1))
    amplitude = rng.uniform(1, 50, size=(n, 1))
    values = (
        level + amplitude * np.sin(2 * np.pi * t / 12) + 0.05 * amplitude * rng.normal(size=(n, 30))
    )
    return values[:, :24], values[:, 24:]


def test_training_learns_beyond_the_naive_forecast() -> None:
    """Guards the training loop: on held-out sine windows the MLP beats the last value."""
    context, target = _sine_windows(2000, 0)
    expert, report = train_global_mlp(context, target, GlobalMLPConfig(epochs=30))
    assert report["epochs"] == 30 and report["windows"] == 2000
    fresh_context, fresh_target = _sine_windows(300, 1)
    point = expert.forecast(torch.from_numpy(fresh_context).float(), 6).point.numpy()
    mlp_error = np.abs(point - fresh_target).mean()
    naive_error = np.abs(fresh_context[:, -1:] - fresh_target).mean()
    assert mlp_error < 0.5 * naive_error


def test_cache_key_follows_the_weights(tmp_path: Path) -> None:
    """Guards versioning: same data and seed give the same key; other weights another key;
    a checkpoint round trip keeps the key and the forecasts."""
    context, target = _sine_windows(200, 0)
    config = GlobalMLPConfig(epochs=2)
    first, _ = train_global_mlp(context, target, config)
    again, _ = train_global_mlp(context, target, config)
    other, _ = train_global_mlp(context, target, GlobalMLPConfig(epochs=2, seed=1))
    assert first.cache_key == again.cache_key != other.cache_key
    assert "weights=" in first.cache_key
    path = save_global_mlp(first, tmp_path / "g.pt")
    loaded = build_expert("global_mlp", ExpertConfig(checkpoint=str(path)))
    assert loaded.cache_key == first.cache_key
    rows = torch.from_numpy(context[:5]).float()
    torch.testing.assert_close(loaded.forecast(rows, 6).point, first.forecast(rows, 6).point)


def test_bad_or_missing_checkpoints_are_refused(tmp_path: Path) -> None:
    """Guards loading: no checkpoint, a missing file, a foreign or tampered file all raise."""
    with pytest.raises(ExpertLoadError, match="trained by the retrain"):
        build_expert("global_mlp", ExpertConfig())
    with pytest.raises(ExpertLoadError, match="does not exist"):
        build_expert("global_mlp", ExpertConfig(checkpoint=str(tmp_path / "nope.pt")))
    torch.save({"name": "other"}, tmp_path / "other.pt")
    with pytest.raises(ExpertLoadError, match="not a version"):
        build_expert("global_mlp", ExpertConfig(checkpoint=str(tmp_path / "other.pt")))
    expert, _ = train_global_mlp(*_sine_windows(50, 0), GlobalMLPConfig(epochs=1))
    path = save_global_mlp(expert, tmp_path / "g.pt")
    raw = torch.load(path, weights_only=True)
    raw["state"]["0.bias"] += 1.0
    torch.save(raw, path)
    with pytest.raises(ExpertLoadError, match="fingerprint"):
        build_expert("global_mlp", ExpertConfig(checkpoint=str(path)))


def test_global_expert_never_sees_backtest_targets() -> None:
    """Guards the training rows: with stride < pred_length, training windows whose target
    overlaps the backtest target are left out, as are the backtest windows."""
    windows = Windows(
        context=np.zeros((4, 3), np.float32),
        target=np.zeros((4, 4), np.float32),
        series_index=np.array([0, 0, 0, 0]),
        origin=np.array([20, 18, 16, 12]),  # stride 2, H 4: origins 18 overlaps 20..23
        is_holdout=np.array([True, False, False, False]),
    )
    assert global_expert_windows(windows).tolist() == [False, False, True, True]


def test_retrain_trains_saves_and_forecasts_with_the_global_expert(
    store: Store, tmp_path: Path
) -> None:
    """Guards item 4 end to end: trained inside the retrain, cached under its weights' key,
    rebuilt from the artifact's checkpoint by the forecast job."""
    rng = np.random.default_rng(0)
    path = tmp_path / "s.jsonl"
    with open(path, "w") as handle:
        for index in range(12):
            t = np.arange(60)
            values = 100 + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(size=60)
            record = {"series_id": f"g{index}", "sequence": values.round(3).tolist(), "freq": "MS"}
            handle.write(json.dumps(record) + "\n")
    config = RetrainConfig(
        jsonl_paths=[str(path)],
        experts=["seasonal_naive", "global_mlp"],
        input_length=24,
        pred_length=6,
        max_windows_per_series=4,
        train={"epochs": 2, "batch_size": 32},  # type: ignore[arg-type]
    )
    result = retrain(store, config)
    artifact = load_artifact(result.artifact_path)
    entry = artifact.experts[artifact.expert_keys.index("global_mlp")]
    assert "weights=" in entry["cache_key"]
    assert Path(entry["config"]["checkpoint"]).is_file()
    run = batch_forecast(store, ForecastConfig())  # experts rebuilt from the artifact
    assert run.n_series == 12 and run.n_rows == 72
    again = retrain(store, config)  # same data, same seed: same weights, all cached
    assert all(stats.computed == 0 for stats in again.precompute)
