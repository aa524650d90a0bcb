"""The trained global trees: exact tree arrays, learning, checkpoints, the retrain."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from moe.artifact import load_artifact
from moe.experts.base import ExpertConfig, ExpertLoadError
from moe.experts.global_trees import (
    GlobalTreesConfig,
    arrays_from_sklearn,
    save_global_trees,
    train_global_trees,
)
from moe.experts.registry import build_expert
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
from storage import Store

SMALL = GlobalTreesConfig(input_points=24, max_iter=20, max_leaf_nodes=8)


def _sine_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of sines with random phase, level and scale: (n, 24) -> (n, 6)."""
    rng = np.random.default_rng(seed)
    t = np.arange(30)[None, :] + rng.integers(0, 12, size=(n, 1))
    level = rng.uniform(50, 1000, size=(n, 1))
    amplitude = rng.uniform(0.05, 0.3, size=(n, 1)) * level
    values = (
        level + amplitude * np.sin(2 * np.pi * t / 12) + 0.02 * level * rng.normal(size=(n, 30))
    )
    return values[:, :24], values[:, 24:]


def test_tree_arrays_predict_what_scikit_learn_predicts() -> None:
    """Guards the copy of the fitted trees: thresholds, sides for missing values, leaf values
    and baselines give scikit-learn's own predictions, NaN inputs included."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(400, 6))
    inputs[rng.random(inputs.shape) < 0.15] = np.nan
    targets = [np.nansum(inputs, axis=1), np.nan_to_num(inputs[:, 0]) * 3 - 1]
    models = [
        HistGradientBoostingRegressor(
            loss="absolute_error", max_iter=15, max_leaf_nodes=7, early_stopping=False
        ).fit(inputs, target)
        for target in targets
    ]
    arrays = arrays_from_sklearn(models)
    fresh = rng.normal(size=(50, 6))
    fresh[rng.random(fresh.shape) < 0.3] = np.nan
    # and rows sitting exactly on split thresholds (scikit-learn sends those left)
    inner = np.flatnonzero(~arrays.leaf)
    on_split = rng.normal(size=(inner.size, 6))
    on_split[np.arange(inner.size), arrays.feature[inner]] = arrays.threshold[inner]
    fresh = np.concatenate([fresh, on_split])
    expected = np.stack([model.predict(fresh) for model in models], axis=1)
    np.testing.assert_allclose(arrays.predict(fresh, chunk=7), expected, rtol=1e-12, atol=1e-12)


def test_training_learns_the_season_at_any_level() -> None:
    """Guards the level scaling and the per-step models: held-out sine windows of levels from
    50 to 1000 are forecast far better than by the last value."""
    context, target = _sine_windows(600, 0)
    expert, report = train_global_trees(context, target, SMALL)
    assert report["steps"] == 6 and report["windows"] == 600
    test_context, test_target = _sine_windows(100, 1)
    point = expert.forecast(torch.from_numpy(test_context).float(), 6).point.double().numpy()
    trees = np.mean(np.abs(point - test_target))
    naive = np.mean(np.abs(test_context[:, -1:] - test_target))
    assert trees < 0.5 * naive


def test_windows_beyond_the_budget_are_sampled() -> None:
    context, target = _sine_windows(300, 0)
    _, report = train_global_trees(context, target, replace(SMALL, max_windows=100))
    assert report["windows"] == 100 and report["windows_available"] == 300


def test_longer_horizons_feed_the_forecast_back_and_empty_rows_are_nan() -> None:
    expert, _ = train_global_trees(*_sine_windows(300, 0), SMALL)
    context = torch.from_numpy(_sine_windows(5, 2)[0]).float()
    context[1] = float("nan")
    short = expert.forecast(context, 6).point
    long = expert.forecast(context, 14).point
    assert long.shape == (5, 14)
    torch.testing.assert_close(long[:, :6], short, equal_nan=True)
    assert torch.isnan(long[1]).all() and torch.isfinite(long[[0, 2, 3, 4]]).all()


def test_cache_key_follows_the_trees_and_survives_a_round_trip(tmp_path: Path) -> None:
    context, target = _sine_windows(300, 0)
    first, _ = train_global_trees(context, target, SMALL)
    again, _ = train_global_trees(context, target, SMALL)
    other, _ = train_global_trees(context, target, replace(SMALL, learning_rate=0.2))
    assert first.cache_key == again.cache_key != other.cache_key
    assert "trees=" in first.cache_key
    path = save_global_trees(first, tmp_path / "t.pt")
    loaded = build_expert("global_trees", ExpertConfig(checkpoint=str(path)))
    assert loaded.cache_key == first.cache_key
    rows = torch.from_numpy(context[:5]).float()
    torch.testing.assert_close(loaded.forecast(rows, 6).point, first.forecast(rows, 6).point)


def test_bad_or_missing_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExpertLoadError, match="trained by the retrain"):
        build_expert("global_trees", ExpertConfig())
    with pytest.raises(ExpertLoadError, match="does not exist"):
        build_expert("global_trees", ExpertConfig(checkpoint=str(tmp_path / "nope.pt")))
    torch.save({"name": "global_mlp"}, tmp_path / "other.pt")
    with pytest.raises(ExpertLoadError, match="not a global_trees checkpoint"):
        build_expert("global_trees", ExpertConfig(checkpoint=str(tmp_path / "other.pt")))
    expert, _ = train_global_trees(*_sine_windows(100, 0), SMALL)
    path = save_global_trees(expert, tmp_path / "t.pt")
    raw = torch.load(path, weights_only=True)
    raw["version"] = 0
    torch.save(raw, path)
    with pytest.raises(ExpertLoadError, match="version-0 checkpoint.*run a retrain"):
        build_expert("global_trees", ExpertConfig(checkpoint=str(path)))
    raw["version"] = 1
    raw["trees"]["value"] = raw["trees"]["value"] + 1.0
    torch.save(raw, path)
    with pytest.raises(ExpertLoadError, match="fingerprint"):
        build_expert("global_trees", ExpertConfig(checkpoint=str(path)))
    raw["trees"]["value"] = raw["trees"]["value"] - 1.0
    loop = {**raw, "trees": {**raw["trees"], "left": raw["trees"]["left"].clone()}}
    loop["trees"]["left"][0] = 0  # the root sends rows to itself: a walk that never ends
    torch.save(loop, path)
    with pytest.raises(ExpertLoadError, match="not a complete global_trees checkpoint.*later"):
        build_expert("global_trees", ExpertConfig(checkpoint=str(path)))
    del raw["trees"]["roots"]
    torch.save(raw, path)
    with pytest.raises(ExpertLoadError, match="not a complete global_trees checkpoint"):
        build_expert("global_trees", ExpertConfig(checkpoint=str(path)))


def test_retrain_trains_saves_and_forecasts_with_the_trees(store: Store, tmp_path: Path) -> None:
    """Trained inside the retrain, cached under its trees' key, rebuilt from the artifact's
    checkpoint by the forecast job; the same data gives the same trees (all cached)."""
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
        experts=["seasonal_naive", "global_trees"],
        input_length=24,
        pred_length=6,
        max_windows_per_series=4,
        train={"epochs": 2, "batch_size": 32},  # type: ignore[arg-type]
        global_expert={"tree_rounds": 10},  # type: ignore[arg-type]
    )
    result = retrain(store, config)
    artifact = load_artifact(result.artifact_path)
    entry = artifact.experts[artifact.expert_keys.index("global_trees")]
    assert "trees=" in entry["cache_key"]
    assert Path(entry["config"]["checkpoint"]).is_file()
    run = batch_forecast(store, ForecastConfig())  # experts rebuilt from the artifact
    assert run.n_series == 12 and run.n_rows == 72
    again = retrain(store, config)
    assert all(stats.computed == 0 for stats in again.precompute)


def test_fits_run_on_the_configured_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the thread cap that keeps a fit from spinning against other work."""
    import sklearn.ensemble  # noqa: F401 - loads the OpenMP runtime threadpoolctl reports
    from threadpoolctl import threadpool_info

    from moe.experts import global_trees

    seen: list[list[int]] = []
    fit_steps = global_trees._fit_steps

    def spy(inputs: np.ndarray, goal: np.ndarray, config: GlobalTreesConfig) -> list[object]:
        seen.append(
            [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"]
        )
        return fit_steps(inputs, goal, config)

    monkeypatch.setattr(global_trees, "_fit_steps", spy)
    train_global_trees(*_sine_windows(50, 0), replace(SMALL, max_iter=2, threads=1))
    assert seen and seen[0] and set(seen[0]) == {1}
