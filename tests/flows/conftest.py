"""Flow tests share one Prefect test harness (a temporary database and API) per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.pipeline.conftest import FAST_RETRAIN, write_series

__all__ = ["FAST_RETRAIN"]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for every flow test (starting one takes 20-30 s here)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def series_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 series of 60 points (the sizes every flow test uses)."""
    return write_series(tmp_path_factory.mktemp("data") / "series.jsonl", n_series=24, length=60)
