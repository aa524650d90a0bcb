"""Small real-looking data for pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

#: Offline experts and tiny lengths: a whole retrain takes seconds.
FAST_RETRAIN = {
    "experts": ["seasonal_naive", "autoets", "autotheta"],
    "input_length": 24,
    "pred_length": 6,
    "season_length": 1,
    "max_windows_per_series": 4,
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.01},
}


def write_series(
    path: Path,
    n_series: int = 24,
    length: int = 60,
    seed: int = 0,
    start: str | None = "2020-01-01",
    freq: str | None = "MS",
) -> Path:
    """Seasonal, trending and noisy series on different scales (some with a start date)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    with open(path, "w") as handle:
        for index in range(n_series):
            level = 10.0 ** rng.integers(0, 4)
            kind = index % 3
            if kind == 0:
                values = level * (1 + 0.3 * np.sin(2 * np.pi * t / 12))
            elif kind == 1:
                values = level * (1 + 0.02 * t)
            else:
                values = level * (1 + 0.1 * rng.standard_normal(length).cumsum() / 5)
            values = values + level * 0.02 * rng.standard_normal(length)
            record = {"series_id": f"s{index:03d}", "sequence": values.round(4).tolist()}
            if start and index % 2 == 0:
                record.update(start=start, freq=freq)
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def series_file(tmp_path: Path) -> Path:
    return write_series(tmp_path / "series.jsonl")


def champion_with_bad_actuals(root: Path, data: Path) -> dict[str, list[float]]:
    """A store at ``root``: a champion on offline experts (horizon 6) from 12 series, three
    forecast runs r1-r3, then actuals 10x off the last value (the MAPE alert holds).

    Returns the series the forecasts were made from (id -> values).
    """
    from pipeline.config import EvaluateConfig, ForecastConfig, RetrainConfig
    from pipeline.evaluate import evaluate_forecasts
    from pipeline.forecast import batch_forecast
    from pipeline.retrain import retrain
    from storage import Store, ingest_jsonl

    store = Store.open(root)
    short = write_series(data / "short.jsonl", n_series=12, length=60)
    retrain(
        store,
        RetrainConfig.model_validate(
            {**FAST_RETRAIN, "jsonl_paths": [str(short)], "forecast_after": False}
        ),
    )
    for run_id in ("r1", "r2", "r3"):
        batch_forecast(store, ForecastConfig(run_id=run_id))
    records = [json.loads(line) for line in short.read_text().splitlines()]
    with open(data / "bad_actuals.jsonl", "w") as handle:
        for record in records:
            last = record["sequence"][-1]
            longer = {**record, "sequence": record["sequence"] + [10 * last] * 6}
            handle.write(json.dumps(longer) + "\n")
    ingest_jsonl(store, data / "bad_actuals.jsonl")
    assert evaluate_forecasts(store, EvaluateConfig()).alert is not None
    return {record["series_id"]: record["sequence"] for record in records}
