"""Retention of old forecast runs (``moe store retain``, storage.retention)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from cli.commands import main
from storage import Store
from storage.retention import expire_forecast_runs
from storage.schemas import TABLE_SCHEMAS
from storage.sql import query

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _write_run(store: Store, run_id: str, series: list[str], created: datetime) -> None:
    """A forecast run of two steps per series, created at ``created``."""
    schema = TABLE_SCHEMAS["forecasts"]
    n = 2 * len(series)
    columns = {field.name: pa.nulls(n, field.type) for field in schema}
    columns.update(
        run_id=pa.array([run_id] * n),
        series_id=pa.array([s for s in series for _ in range(2)]),
        step=pa.array([1, 2] * len(series), pa.int32()),
        point=pa.array([1.0] * n),
        created_at=pa.array([created] * n, schema.field("created_at").type),
    )
    with store.rewrite_partition("forecasts", {"run_id": run_id}) as write:
        write("part-0", pa.table(columns))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Runs: old1 and old2 (both 200 days old; old2 is s3's only forecast), mid (40 days),
    new (today)."""
    store = Store.open(tmp_path / "store")
    _write_run(store, "old1", ["s1", "s2"], NOW - timedelta(days=200))
    _write_run(store, "old2", ["s1", "s3"], NOW - timedelta(days=199))
    _write_run(store, "mid", ["s1", "s2"], NOW - timedelta(days=40))
    _write_run(store, "new", ["s1", "s2"], NOW)
    return store


def _runs(store: Store) -> list[str]:
    return query(store, "SELECT DISTINCT run_id FROM forecasts ORDER BY 1").column(0).to_pylist()


def test_old_runs_go_unless_they_hold_a_latest_forecast(store: Store) -> None:
    """Guards retention: runs older than the period are dropped whole, except one that is
    still some series' latest forecast; latest_forecasts is unchanged by it."""
    latest_before = query(store, "SELECT series_id, run_id FROM latest_forecasts ORDER BY 1, 2")
    report = expire_forecast_runs(store, timedelta(days=90), now=NOW)
    assert report.dropped == ["old1"] and report.kept_latest == ["old2"]
    assert _runs(store) == ["mid", "new", "old2"]
    latest_after = query(store, "SELECT series_id, run_id FROM latest_forecasts ORDER BY 1, 2")
    assert latest_after.equals(latest_before)
    again = expire_forecast_runs(store, timedelta(days=90), now=NOW)
    assert again.dropped == []  # idempotent


def test_dry_run_keep_runs_and_bad_values(store: Store) -> None:
    """Guards the options: a dry run changes nothing; the newest keep_runs runs stay
    whatever their age; negative values are refused."""
    report = expire_forecast_runs(store, timedelta(days=0), now=NOW, dry_run=True)
    assert report.dropped == ["mid", "old1"] and report.kept_newest == []
    assert _runs(store) == ["mid", "new", "old1", "old2"]
    report = expire_forecast_runs(store, timedelta(days=10), keep_runs=2, now=NOW)
    assert report.kept_newest == ["mid"] and report.dropped == ["old1"]
    with pytest.raises(ValueError, match="keep_runs"):
        expire_forecast_runs(store, timedelta(days=1), keep_runs=-1)
    with pytest.raises(ValueError, match="older_than"):
        expire_forecast_runs(store, timedelta(days=-1))


def test_readers_during_retention_never_fail(store: Store) -> None:
    """Guards 'safe under concurrent readers': queries running while runs are dropped
    always succeed and see each run whole or not at all (2 rows per series and run)."""
    for index in range(12):
        _write_run(store, f"x{index:02d}", ["s1", "s2"], NOW - timedelta(days=300 + index))
    errors: list[BaseException] = []
    counts: list[set[int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                table = query(store, "SELECT run_id, count(*) AS n FROM forecasts GROUP BY 1")
                counts.append(set(table.column("n").to_pylist()))
            except BaseException as error:  # noqa: BLE001 - the test reports any failure
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        report = expire_forecast_runs(store, timedelta(days=90), now=NOW)
    finally:
        stop.set()
        reader.join()
    assert len(report.dropped) == 13 and not errors and counts
    assert all(c <= {4} for c in counts)  # every run seen had all of its 4 rows


def test_listing_skips_a_run_dropped_while_it_is_listed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the race behind the reader test above, made certain: a run's folder renamed
    away (as drop_partition does) after the table folder was read and before the run's
    own folder is: the listing leaves that run out instead of raising FileNotFoundError,
    and a query over it sees the other runs."""
    victim = Path(store.table_location("forecasts", {"run_id": "old1"}))
    real_scandir = os.scandir

    def scandir_racing_a_writer(path: str = ".") -> Iterator[os.DirEntry[str]]:
        if Path(path) == victim and victim.exists():
            os.replace(victim, store.tmp_dir / "retired-by-the-test")
        return real_scandir(path)

    before = store.part_locations("forecasts")
    monkeypatch.setattr(os, "scandir", scandir_racing_a_writer)
    parts = store.part_locations("forecasts")
    assert not victim.exists()  # the race happened
    assert parts == [p for p in before if Path(p).parent != victim] and len(parts) < len(before)
    assert _runs(store) == ["mid", "new", "old2"]


def test_cli_retain(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """Guards `moe store retain`: it reports what it drops; bad flags are one-line errors."""
    assert main(["--store", str(store.root), "store", "retain", "--days", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would drop" in out and "kept 1 that still hold" in out
    assert _runs(store) == ["mid", "new", "old1", "old2"]
    with pytest.raises(SystemExit):
        main(["--store", str(store.root), "store", "retain", "--days", "-3"])
    assert "must be >= 0" in capsys.readouterr().err
