"""Per-series season lengths: one retrain and forecast over a mixed-frequency store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moe.experts.base import ExpertConfig, for_season
from moe.experts.registry import build_expert
from moe.metrics import mase, naive_scale
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.precompute import load_cached, precompute_cache
from pipeline.retrain import retrain
from pipeline.training_data import build_experts_for, prepare_windows
from storage import Store, ingest_jsonl
from storage.sql import query

FAST_TRAIN = {"epochs": 2, "batch_size": 32, "lr": 0.01}
PERIODS = {"MS": 12, "D": 7, "QS": 4}


def _mixed_file(path: Path, per_kind: int = 4, length: int = 84) -> Path:
    """Monthly, daily and quarterly series with their own pattern, plus unlabelled daily ones."""
    rng = np.random.default_rng(3)
    t = np.arange(length)
    with open(path, "w") as handle:
        for freq, period in PERIODS.items():
            for index in range(per_kind):
                pattern = np.sin(2 * np.pi * np.arange(period) / period) + rng.normal(size=period)
                values = 50 + 0.1 * t + 5 * pattern[t % period] + rng.normal(size=length)
                record = {
                    "series_id": f"{freq}-{index}",
                    "sequence": values.round(3).tolist(),
                    "start": "2020-01-01",
                    "freq": freq,
                }
                handle.write(json.dumps(record) + "\n")
        for index in range(per_kind):  # no freq: the period (7) must be detected
            pattern = np.sin(2 * np.pi * np.arange(7) / 7) + rng.normal(size=7)
            values = 50 + 5 * pattern[t % 7] + 0.5 * rng.normal(size=length)
            record = {"series_id": f"nofreq-{index}", "sequence": values.round(3).tolist()}
            handle.write(json.dumps(record) + "\n")
    return path


def _config(path: Path, **overrides: object) -> RetrainConfig:
    base = {
        "jsonl_paths": [str(path)],
        "experts": ["seasonal_naive", "autotheta"],
        "input_length": 36,
        "pred_length": 6,
        "max_windows_per_series": 3,
        "train": FAST_TRAIN,
    }
    return RetrainConfig.model_validate({**base, **overrides})


def test_windows_carry_each_series_season(store: Store, tmp_path: Path) -> None:
    """Guards that each window gets its series' period: from freq, else detected."""
    path = _mixed_file(tmp_path / "mixed.jsonl")
    ingest_jsonl(store, str(path))
    series, windows = prepare_windows(store, _config(path))
    assert windows.season_length is not None
    expected = {"MS": 12, "D": 7, "QS": 4, "nofreq": 7}
    for row in range(len(windows)):
        kind = series.series_id[windows.series_index[row]].split("-")[0]
        assert windows.season_length[row] == expected[kind]
    forced = prepare_windows(store, _config(path, season_length=5))[1]
    assert forced.season_length is not None and set(forced.season_length.tolist()) == {5}


def test_season_variants_have_their_own_cache_keys() -> None:
    """Guards that forecasts cached for one period are never read for another."""
    base = build_expert("autoets", ExpertConfig(season_length=1))
    monthly = for_season(base, 12)
    assert "season_length=12" in monthly.cache_key and monthly.cache_key != base.cache_key
    assert for_season(base, 12) is monthly  # built once per period
    assert for_season(monthly, 1) is base


def test_precompute_runs_each_row_with_its_period(store: Store) -> None:
    """Guards that the cache holds SeasonalNaive(m) per row, m taken from that row."""
    rng = np.random.default_rng(0)
    context = rng.normal(size=(3, 28)).astype(np.float32)
    seasons = np.array([12, 7, 4])
    experts = [build_expert("seasonal_naive", ExpertConfig())]
    precompute_cache(store, experts, context, 6, progress=False, season_lengths=seasons)
    points, _ = load_cached(store, experts, context, 6, season_lengths=seasons)
    for row, period in enumerate(seasons):
        last_season = context[row, -period:]
        expected = np.resize(last_season, 6)
        np.testing.assert_allclose(points[row, 0].numpy(), expected, rtol=1e-5)
    with pytest.raises(LookupError):  # the same windows under other periods are not cached
        load_cached(store, experts, context, 6, season_lengths=np.array([1, 1, 1]))


def test_mixed_frequency_retrain_and_forecast(store: Store, tmp_path: Path) -> None:
    """Guards one retrain + forecast over monthly, daily and quarterly series in one store."""
    path = _mixed_file(tmp_path / "mixed.jsonl")
    config = _config(path)
    result = retrain(store, config)
    assert np.isfinite(result.challenger_mase)
    keys = query(store, "SELECT DISTINCT cache_key FROM expert_forecasts").column(0).to_pylist()
    naive_keys = {key for key in keys if key.startswith("seasonal_naive")}
    assert {f"season_length={m}" for m in (12, 7, 4)} <= {
        part for key in naive_keys for part in key.split("|")
    }
    run = batch_forecast(store, ForecastConfig())
    assert run.n_series == 16 and run.n_rows == 16 * 6
    # The backtest's MASE used each series' own period: recompute one expert's score.
    series, windows = prepare_windows(store, config)
    holdout = windows.select(windows.is_holdout)
    assert holdout.season_length is not None
    experts = build_experts_for(config)
    points, _ = load_cached(
        store, experts, holdout.context, 6, season_lengths=holdout.season_length
    )
    own = mase(holdout.target, points[:, 0].numpy(), holdout.context, holdout.season_length)
    stored = query(
        store,
        "SELECT mase FROM backtest_metrics WHERE model = 'seasonal_naive' AND series_id IS NULL",
    ).column(0)[0]
    assert stored.as_py() == pytest.approx(float(np.nanmean(own)), rel=1e-6)
    assert not np.allclose(naive_scale(holdout.context, holdout.season_length),
                           naive_scale(holdout.context, 12))  # fmt: skip


def test_cli_flag_forces_the_season(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards `moe retrain --season-length N`: the flow gets that period for every series."""
    from cli import commands as cli

    seen: list[RetrainConfig] = []

    def fake_retrain(config: RetrainConfig, store: str | None) -> dict[str, object]:
        seen.append(config)
        return {}

    import flows.jobs

    monkeypatch.setattr(flows.jobs, "retrain", fake_retrain)
    args = cli._parser().parse_args(["retrain", "--season-length", "7"])
    assert args.run(args) == 0
    assert seen[0].season_length == 7
    args = cli._parser().parse_args(["retrain"])
    args.run(args)
    assert seen[1].season_length is None


def test_config_expert_names_match_the_registry() -> None:
    """Guards the form's expert choices against the registry (global_mlp included)."""
    from typing import get_args

    from moe.experts.registry import EXPERT_NAMES
    from pipeline.config import ExpertName

    assert set(get_args(ExpertName)) == set(EXPERT_NAMES)
