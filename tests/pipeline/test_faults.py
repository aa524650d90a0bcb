"""Faults and load: kill -9 mid-forecast, and writers running beside SQL readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb

from moe.experts.fake import fake_trio
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
from storage import Store
from storage.sql import query
from tests.pipeline.conftest import write_series

REPO = Path(__file__).resolve().parents[2]
CONFIG = RetrainConfig(
    experts=["seasonal_naive", "autoets", "autotheta"],
    input_length=24,
    pred_length=6,
    max_windows_per_series=4,
    train={"epochs": 2, "batch_size": 32, "lr": 0.01},
    forecast_after=False,
)


def _worker(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.pipeline._worker", *args]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _rows(store: Store, run_id: str) -> int:
    return (
        query(store, "SELECT count(*) FROM forecasts WHERE run_id = $1", [run_id])
        .column(0)[0]
        .as_py()
    )


def test_killed_forecast_rerun_leaves_one_set(store: Store, tmp_path: Path) -> None:
    """kill -9 after some chunks: the run has no rows; the rerun has exactly one full set."""
    retrain(
        store,
        CONFIG.model_copy(update={"jsonl_paths": [str(write_series(tmp_path / "s.jsonl", 40))]}),
        experts=fake_trio(),
    )
    process = _worker("forecast", str(store.root), "killed", "4", "0.3")
    deadline = time.monotonic() + 60
    staged: list[Path] = []
    while time.monotonic() < deadline and len(staged) < 2:
        staged = list(store.tmp_dir.glob("partition-*/*.parquet"))
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(staged) >= 2, "the kill should land after some chunks were written"
    assert _rows(store, "killed") == 0  # nothing half written is visible
    for chunk_size in (4, 7):  # the rerun, then one more with other chunking
        batch_forecast(
            store, ForecastConfig(run_id="killed", chunk_size=chunk_size), experts=fake_trio()
        )
        assert _rows(store, "killed") == 40 * 6


def test_writers_beside_four_readers(store: Store, tmp_path: Path) -> None:
    """A retrain and a batch forecast run while 4 readers query: no lock error, nothing lost."""
    data = write_series(tmp_path / "s.jsonl", 30)
    retrain(store, CONFIG.model_copy(update={"jsonl_paths": [str(data)]}), experts=fake_trio())
    errors: list[BaseException] = []
    queries = [0]
    stop = threading.Event()

    def reader(use_catalog: bool) -> None:
        try:
            while not stop.is_set():
                if use_catalog:  # an analyst holding the DuckDB file open read-only
                    with duckdb.connect(str(store.catalog_path), read_only=True) as connection:
                        connection.execute("SELECT count(*) FROM forecasts").fetchall()
                else:
                    query(store, "SELECT count(*) FROM latest_forecasts")
                queries[0] += 1
                time.sleep(0.05)  # an analyst, not a busy loop hogging both cores
        except BaseException as error:  # any lock error fails the test
            errors.append(error)

    readers = [threading.Thread(target=reader, args=(i % 2 == 0,)) for i in range(4)]
    for thread in readers:
        thread.start()
    second = CONFIG.model_copy(update={"promotion_margin": 0.0})
    retraining = _worker("retrain", str(store.root), second.model_dump_json(), "0.05")
    forecasting = _worker("forecast", str(store.root), "busy", "5", "0.05")
    codes = (retraining.wait(timeout=300), forecasting.wait(timeout=300))
    stop.set()
    for thread in readers:
        thread.join()
    assert codes == (0, 0), (retraining.stderr.read(), forecasting.stderr.read())
    assert errors == [] and queries[0] > 4
    assert _rows(store, "busy") == 30 * 6
    versions = query(store, "SELECT count(*) FROM model_registry").column(0)[0].as_py()
    assert versions == 2
