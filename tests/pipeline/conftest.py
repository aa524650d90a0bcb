"""Small real-looking data for pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


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
