"""The default pool (real statsforecast and fracast experts) through retrain and the batch
forecast on series a user's store will hold sooner or later: hourly with a daily cycle,
constant, intermittent, negative and trending, a level of 1e9, gaps, and too short for a
full context. Every series must come back with finite, ordered forecasts on its own scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moe.experts.registry import DEFAULT_POOL
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
from storage import Store, ingest_jsonl
from storage.schemas import QUANTILE_COLUMNS
from storage.sql import query

HORIZON = 6


def _awkward_series(rng: np.random.Generator) -> dict[str, dict[str, object]]:
    """Two series of each kind, keyed by id."""
    series: dict[str, dict[str, object]] = {}
    hours = np.arange(150)
    for copy in range(2):
        daily = 50 + 10 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 1, hours.size)
        series[f"hourly{copy}"] = {"freq": "h", "start": "2024-01-01", "sequence": daily}
        series[f"constant{copy}"] = {"sequence": np.full(40, 5.0 + copy)}
        sparse = (rng.random(60) < 0.2) * rng.poisson(3, 60)
        series[f"intermittent{copy}"] = {"sequence": sparse.astype(float)}
        falling = -1000 - 5 * np.arange(50) + rng.normal(0, 10, 50)
        series[f"negative{copy}"] = {"sequence": falling}
        walk = 1e9 * (1 + 0.01 * np.cumsum(rng.normal(size=50)))
        series[f"huge{copy}"] = {"sequence": walk}
        gappy = 100 + rng.normal(0, 5, 50)
        gappy[rng.choice(np.arange(5, 45), 6, replace=False)] = np.nan
        series[f"gaps{copy}"] = {"sequence": gappy}
        series[f"short{copy}"] = {"sequence": rng.normal(10, 1, 12)}
    return series


def _write(path: Path, series: dict[str, dict[str, object]]) -> None:
    with open(path, "w") as handle:
        for series_id, fields in series.items():
            values = np.asarray(fields["sequence"], float)
            sequence = [None if np.isnan(v) else round(float(v), 3) for v in values]
            record = {**fields, "series_id": series_id, "sequence": sequence}
            handle.write(json.dumps(record) + "\n")


def test_default_pool_forecasts_awkward_series(store: Store, tmp_path: Path) -> None:
    series = _awkward_series(np.random.default_rng(0))
    path = tmp_path / "awkward.jsonl"
    _write(path, series)
    ingest_jsonl(store, str(path))
    config = RetrainConfig(
        pred_length=HORIZON,
        max_windows_per_series=2,
        forecast_after=False,
        train={"epochs": 2, "batch_size": 32},  # type: ignore[arg-type]
    )
    assert list(config.experts) == list(DEFAULT_POOL)  # the pool a user gets
    result = retrain(store, config)
    assert result.promoted, result.reason
    run = batch_forecast(store, ForecastConfig())

    bounds = ", ".join(QUANTILE_COLUMNS)
    rows = query(
        store,
        f"SELECT series_id, step, point, {bounds} FROM forecasts WHERE run_id = $1 "
        "ORDER BY series_id, step",
        [run.run_id],
    ).to_pydict()
    ids = sorted(series)
    assert sorted(set(rows["series_id"])) == ids
    point = np.asarray(rows["point"], float).reshape(len(ids), HORIZON)
    levels = np.array(
        [[np.nan if v is None else v for v in rows[c]] for c in QUANTILE_COLUMNS], float
    ).reshape(len(QUANTILE_COLUMNS), len(ids), HORIZON)
    assert np.isfinite(point).all() and np.isfinite(levels).all()
    assert (np.diff(levels, axis=0) >= -1e-6 * np.abs(levels[1:]).clip(1)).all()
    q05, q95 = levels[0], levels[-1]
    assert ((q05 <= point + 1e-6 * np.abs(point)) & (point <= q95 + 1e-6 * np.abs(point))).all()

    for row, series_id in enumerate(ids):
        values = np.asarray(series[series_id]["sequence"], float)
        observed = values[~np.isnan(values)]
        if series_id.startswith("constant"):
            np.testing.assert_allclose(point[row], observed[0], rtol=1e-4)
        elif series_id.startswith("intermittent"):
            assert (q05[row] >= 0).all()  # never negative in its history: floored at 0
        else:  # on the scale of its recent history, allowing for a trend over the horizon
            recent = observed[-24:]
            spread = recent.max() - recent.min() + 1e-9 * np.abs(recent).max()
            assert (point[row] > recent.min() - 2 * spread).all(), series_id
            assert (point[row] < recent.max() + 2 * spread).all(), series_id
