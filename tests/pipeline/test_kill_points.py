"""kill -9 of a retrain mid-cache, and of a CLI that started a temporary Prefect server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moe.experts.fake import fake_trio
from pipeline.retrain import retrain
from storage import Store
from storage.sql import query
from tests.pipeline.conftest import write_series
from tests.pipeline.test_faults import CONFIG, REPO, _worker


def _gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie waiting to be reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_parts", [1, 2])
def test_killed_retrain_rerun_leaves_one_model_and_no_duplicate_cache(
    store: Store, tmp_path: Path, kill_after_parts: int
) -> None:
    """kill -9 while the expert cache fills; the rerun registers one model, caches each once."""
    data = write_series(tmp_path / "s.jsonl", 20)
    config = CONFIG.model_copy(update={"jsonl_paths": [str(data)]})
    process = _worker("retrain", str(store.root), config.model_dump_json(), "0.4")
    cache = store.table_dir("expert_forecasts")
    deadline = time.monotonic() + 120
    while len([p for p in cache.glob("cache=*/*.parquet") if "_empty" not in str(p)]) < (
        kill_after_parts
    ):
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert query(store, "SELECT count(*) FROM model_registry").column(0)[0].as_py() == 0
    retrain(store, config, experts=fake_trio())
    counts = query(
        store,
        "SELECT (SELECT count(*) FROM model_registry), "
        "(SELECT count(*) FROM model_registry WHERE status = 'champion'), "
        "(SELECT count(*) FROM series), (SELECT count(*) FROM series_versions), "
        "(SELECT count(*) FROM expert_forecasts), "
        "(SELECT count(DISTINCT (cache_key, window_hash)) FROM expert_forecasts)",
    ).to_pylist()[0]
    models, champions, series, versions, cached, distinct = counts.values()
    assert (models, champions, series, versions) == (1, 1, 20, 20)
    assert cached == distinct > 0  # nothing computed twice was stored twice


_SERVER_SCRIPT = """
import subprocess, sys, time
from prefect.server.api.server import SubprocessASGIServer
# Stand-in for uvicorn (a real server takes 20-80 s to start here); the launch path is Prefect's.
SubprocessASGIServer._run_uvicorn_command = lambda self: subprocess.Popen(["sleep", "600"])
from cli.commands import _prefect_env
_prefect_env()  # what every flow command of the CLI runs first
server = SubprocessASGIServer()._run_uvicorn_command()
print(server.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_temporary_server_dies_with_a_killed_cli() -> None:
    """kill -9 of the CLI process stops the temporary Prefect server it started (no orphan)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    cli = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert cli.stdout is not None
    server = int(cli.stdout.readline())
    time.sleep(0.5)  # the watchdog is up
    assert not _gone(server)
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait()
    deadline = time.monotonic() + 15
    while not _gone(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _gone(server):
        os.kill(server, signal.SIGKILL)
        pytest.fail("the temporary server outlived the killed CLI")


@pytest.mark.slow
def test_retrain_forecast_and_ingest_at_once(store: Store, tmp_path: Path) -> None:
    """A retrain, a batch forecast and an ingest in three processes: nothing lost or doubled."""
    first = write_series(tmp_path / "a.jsonl", 20)
    retrain(store, CONFIG.model_copy(update={"jsonl_paths": [str(first)]}), experts=fake_trio())
    more = write_series(tmp_path / "b.jsonl", 30, seed=1)  # ids s000..s029: 10 new, 20 changed
    second = CONFIG.model_copy(update={"jsonl_paths": [str(first)], "promotion_margin": 0.0})
    workers = [
        _worker("retrain", str(store.root), second.model_dump_json(), "0.05"),
        _worker("forecast", str(store.root), "busy", "5", "0.05"),
        subprocess.Popen(
            [sys.executable, "-m", "cli", "--store", str(store.root), "ingest", str(more)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ),
    ]
    codes = [worker.wait(timeout=300) for worker in workers]
    assert codes == [0, 0, 0], [w.stderr.read() for w in workers if w.stderr]
    # A repeat of a series' previous content is a duplicate; A -> B -> A is a legit revert
    # (the retrain re-ingests a.jsonl after or before b.jsonl changed 20 series).
    counts = query(
        store,
        "SELECT (SELECT count(*) FROM series), (SELECT count(*) FROM series_versions), "
        "(SELECT count(*) FROM (SELECT content_hash = lag(content_hash) OVER (PARTITION BY "
        "series_id ORDER BY version) AS repeated FROM series_versions) WHERE repeated), "
        "(SELECT count(*) FROM model_registry), "
        "(SELECT count(*) FROM forecasts WHERE run_id = 'busy'), "
        "(SELECT count(DISTINCT (series_id, step)) FROM forecasts WHERE run_id = 'busy'), "
        "(SELECT count(DISTINCT series_id) FROM forecasts WHERE run_id = 'busy')",
    ).to_pylist()[0]
    series, versions, repeated, models, rows, distinct_rows, forecast_series = counts.values()
    assert (series, repeated, models) == (30, 0, 2) and versions in (50, 70)
    assert rows == distinct_rows == forecast_series * CONFIG.pred_length
    assert forecast_series in (20, 30)  # the series stored when the forecast listed them
