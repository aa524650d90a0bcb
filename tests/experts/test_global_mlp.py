"""The trained global expert: training, versioned cache key, checkpoint loading, retrain."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from moe.artifact import load_artifact
from moe.data import rolling_windows
from moe.experts.base import ExpertConfig, ExpertLoadError
from moe.experts.global_mlp import (
    GlobalMLPConfig,
    GlobalMLPForecaster,
    planned_epochs,
    save_global_mlp,
    train_global_mlp,
)
from moe.experts.registry import build_expert
from moe.experts.trained import GlobalExpertConfig, cross_fit, fit_global_expert, history_windows
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
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
    config = GlobalMLPConfig(epochs=30, width=64, depth=2, batch_size=128, min_steps=1)
    expert, report = train_global_mlp(context, target, config)
    assert report["epochs"] == [30, 30, 30] and report["windows"] == 2000  # 3 members
    assert expert.input_lengths == (12, 18, 24)  # 2, 3 and 4 horizons of 6
    fresh_context, fresh_target = _sine_windows(300, 1)
    point = expert.forecast(torch.from_numpy(fresh_context).float(), 6).point.numpy()
    mlp_error = np.abs(point - fresh_target).mean()
    naive_error = np.abs(fresh_context[:, -1:] - fresh_target).mean()
    assert mlp_error < 0.5 * naive_error


def test_time_budget_plans_fewer_whole_epochs() -> None:
    """Guards the time budget: it lowers the planned epochs (at least one), never raises them."""
    assert planned_epochs(10, 100, 600.0, 0.1) == 10  # 100 s wanted, 600 s allowed
    assert planned_epochs(10, 100, 35.0, 0.1) == 3  # 10 s per epoch
    assert planned_epochs(10, 100, 1.0, 0.1) == 1
    assert planned_epochs(10, 100, float("inf"), 0.1) == 10


def test_budget_cuts_are_reported_and_timing_leaves_the_weights_alone() -> None:
    """Guards reproducibility: a budget that does not bind gives the weights of no budget
    (the timing probe touches no RNG); one that binds runs fewer epochs and says so."""
    context, target = _sine_windows(400, 0)
    small = GlobalMLPConfig(lookbacks=(2,), epochs=3, width=16, depth=1, min_steps=1)
    unbounded, report = train_global_mlp(context, target, replace(small, max_seconds=float("inf")))
    bounded, bounded_report = train_global_mlp(context, target, small)
    assert report["epochs_cut_for_time"] == bounded_report["epochs_cut_for_time"] == [0]
    assert unbounded.fingerprint == bounded.fingerprint
    _, tight = train_global_mlp(context, target, replace(small, max_seconds=1e-9))
    assert tight["epochs"] == [1] and tight["epochs_cut_for_time"] == [2]


def test_cache_key_follows_the_weights(tmp_path: Path) -> None:
    """Guards versioning: same data and seed give the same key; other weights another key;
    a checkpoint round trip keeps the key and the forecasts."""
    context, target = _sine_windows(200, 0)
    config = GlobalMLPConfig(epochs=2, width=32, depth=2, min_steps=1)
    first, _ = train_global_mlp(context, target, config)
    again, _ = train_global_mlp(context, target, config)
    other, _ = train_global_mlp(context, target, replace(config, seed=1))
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
    with pytest.raises(ExpertLoadError, match="not a global_mlp checkpoint"):
        build_expert("global_mlp", ExpertConfig(checkpoint=str(tmp_path / "other.pt")))
    small = GlobalMLPConfig(epochs=1, width=16, depth=1, min_steps=1)
    expert, _ = train_global_mlp(*_sine_windows(50, 0), small)
    old = save_global_mlp(expert, tmp_path / "old.pt")
    raw = torch.load(old, weights_only=True)
    raw["version"] = 1  # a checkpoint of the previous network
    torch.save(raw, old)
    with pytest.raises(ExpertLoadError, match="version-1 checkpoint.*run a retrain"):
        build_expert("global_mlp", ExpertConfig(checkpoint=str(old)))
    path = save_global_mlp(expert, tmp_path / "g.pt")
    raw = torch.load(path, weights_only=True)
    raw["members"][0]["state"]["0.bias"] += 1.0
    torch.save(raw, path)
    with pytest.raises(ExpertLoadError, match="fingerprint"):
        build_expert("global_mlp", ExpertConfig(checkpoint=str(path)))
    del raw["members"][0]["state"]
    torch.save(raw, path)
    with pytest.raises(ExpertLoadError, match="not a complete global_mlp checkpoint"):
        build_expert("global_mlp", ExpertConfig(checkpoint=str(path)))


def test_members_are_averaged_and_saved_together(tmp_path: Path) -> None:
    """Guards the ensemble: the expert's forecast is the mean of its member networks'
    (each on its own lookback), and a checkpoint round trip keeps every member."""
    context, target = _sine_windows(300, 0)
    config = GlobalMLPConfig(lookbacks=(2, 4), epochs=2, width=16, depth=1, min_steps=1)
    expert, report = train_global_mlp(context, target, config)
    assert report["members"] == 2 and expert.input_lengths == (12, 24)
    assert "|L=12+24|" in expert.cache_key
    rows = torch.from_numpy(context[:7]).float()
    alone = [
        GlobalMLPForecaster([(length, network)], 6, 16, 1, config.level_points)
        .forecast(rows, 6)
        .point
        for length, network in zip(expert.input_lengths, expert.networks, strict=True)
    ]
    torch.testing.assert_close(expert.forecast(rows, 6).point, (alone[0] + alone[1]) / 2)
    assert not torch.allclose(alone[0], alone[1])  # two different networks
    loaded = build_expert(
        "global_mlp", ExpertConfig(checkpoint=str(save_global_mlp(expert, tmp_path / "e.pt")))
    )
    assert loaded.cache_key == expert.cache_key
    torch.testing.assert_close(loaded.forecast(rows, 6).point, expert.forecast(rows, 6).point)


def test_single_network_checkpoints_still_load(tmp_path: Path) -> None:
    """Guards stores trained before ensembles: a one-network checkpoint (network at the top
    level) loads with the cache key it had, so its cached forecasts still hit."""
    context, target = _sine_windows(100, 0)
    config = GlobalMLPConfig(lookbacks=(3,), epochs=1, width=16, depth=1, min_steps=1)
    expert, _ = train_global_mlp(context, target, config)
    network = expert.networks[0]
    old = {
        "name": "global_mlp",
        "version": 2,
        "input_length": 18,
        "horizon": 6,
        "width": 16,
        "depth": 1,
        "level_points": config.level_points,
        "state": {k: v.clone() for k, v in network.state_dict().items()},
        "fingerprint": expert.fingerprint,
    }
    torch.save(old, tmp_path / "old.pt")
    loaded = build_expert("global_mlp", ExpertConfig(checkpoint=str(tmp_path / "old.pt")))
    assert loaded.cache_key == expert.cache_key
    assert "|L=18|" in loaded.cache_key


def test_global_expert_never_sees_backtest_targets() -> None:
    """Guards the training rows: every dense window's target ends before its series' first
    backtest target, and changing the backtest points changes no training window."""
    rng = np.random.default_rng(0)
    values = [rng.normal(size=40) + 10, rng.normal(size=30) + 5]
    windows = rolling_windows(values, 8, 4, stride=2, max_windows_per_series=5, holdout=2)
    backtest = windows.is_holdout
    first = {i: windows.origin[backtest & (windows.series_index == i)].min() for i in (0, 1)}
    dense = history_windows(values, windows, 8, 4)
    assert len(dense.owner) > 20
    changed = [v.copy() for v in values]
    for i in (0, 1):
        changed[i][first[i] :] += 1000.0  # every backtest target point
    again = history_windows(changed, windows, 8, 4)
    np.testing.assert_array_equal(dense.context, again.context)
    np.testing.assert_array_equal(dense.target, again.target)
    assert np.nanmax(np.abs(dense.target)) < 100  # no shifted point inside a target


@pytest.mark.parametrize("name", ["global_mlp", "global_trees"])
def test_gate_windows_get_out_of_fold_forecasts(name: str) -> None:
    """Guards the cross-fit: a window is forecast by a model trained without its series,
    so changing one series moves no forecast of the other series in its fold."""
    rng = np.random.default_rng(1)
    t = np.arange(60)
    values = [
        50 + 5 * np.sin(2 * np.pi * (t + rng.integers(12)) / 12) + rng.normal(size=60)
        for _ in range(10)
    ]
    settings = GlobalExpertConfig(width=16, depth=1, epochs=2, min_steps=5, tree_rounds=20)
    seed = 0
    windows = rolling_windows(values, 24, 6, max_windows_per_series=4, holdout=1)
    training = history_windows(values, windows, 24, 6)
    before = cross_fit(name, training, windows, len(values), settings, seed)
    assert np.isnan(before[windows.is_holdout]).all()
    assert np.isfinite(before[~windows.is_holdout]).all()
    fold_of = np.random.default_rng(seed).integers(0, 2, size=len(values))
    mates = [i for i in range(1, 10) if fold_of[i] == fold_of[0]]
    others = [i for i in range(1, 10) if fold_of[i] != fold_of[0]]
    assert mates and others
    changed = [v.copy() for v in values]
    changed[0] = changed[0] * 3.0 + 40.0
    training = history_windows(changed, windows, 24, 6)
    after = cross_fit(name, training, windows, len(values), settings, seed)
    same_fold = np.isin(windows.series_index, mates) & ~windows.is_holdout
    other_fold = np.isin(windows.series_index, others) & ~windows.is_holdout
    np.testing.assert_array_equal(before[same_fold], after[same_fold])
    assert not np.allclose(before[other_fold], after[other_fold])


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
        global_expert={"width": 32, "depth": 2, "epochs": 2, "min_steps": 20},  # type: ignore[arg-type]
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


def test_retrain_warns_when_the_time_budget_cuts_epochs(caplog: pytest.LogCaptureFixture) -> None:
    """Guards the warning: a binding budget makes weights machine-dependent; the run says so."""
    values = [50 + 5 * np.sin(2 * np.pi * np.arange(60) / 12) + i for i in range(4)]
    settings = {"width": 8, "depth": 1, "epochs": 3, "min_steps": 1, "lookbacks": [2]}
    windows = rolling_windows(values, 24, 6, max_windows_per_series=4, holdout=1)
    training = history_windows(values, windows, 24, 6)
    for seconds, warned in ((600.0, False), (1e-9, True)):
        config = GlobalExpertConfig.model_validate({**settings, "max_seconds": seconds})
        caplog.clear()
        with caplog.at_level("WARNING", logger="moe.experts.trained"):
            fit_global_expert("global_mlp", training, config, input_length=24, seed=0)
        assert any("max_seconds" in r.getMessage() for r in caplog.records) is warned
