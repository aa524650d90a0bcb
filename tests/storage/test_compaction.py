"""`moe store compact` (storage.compaction): fewer parts, the same rows, safe for readers."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cli.commands import main
from storage import Store, ingest_jsonl
from storage.compaction import compact_store, compact_table
from storage.registry import promote, register_model
from storage.series import load_series
from storage.sql import query

_VIEWS = ("series", "series_versions", "ingest_runs", "ingest_rejects", "model_registry")


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(row + "\n" for row in rows))
    return path


def _day(n_series: int, length: int) -> list[str]:
    """Every series with ``length`` points (a day's file: yesterday's plus one point)."""
    return [
        json.dumps({"series_id": f"s{i:02d}", "sequence": [float(i + t) for t in range(length)]})
        for i in range(n_series)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Eight daily ingests (appends), rejects, an edit, and a registered model."""
    store = Store.open(tmp_path / "store")
    for day in range(8):
        rows = _day(12, 10 + day) + ['{"series_id": "bad", "sequence": "x"}']
        if day == 5:
            rows[0] = json.dumps({"series_id": "s00", "sequence": [9.0] * 15})  # an edit
        ingest_jsonl(store, _write(tmp_path / f"day{day}.jsonl", rows))
    artifact = tmp_path / "model.pt"
    artifact.write_bytes(b"not a real model")
    version = register_model(
        store,
        artifact,
        gate_kind="linear",
        expert_keys=["a", "b"],
        input_length=4,
        pred_length=2,
        train_windows=10,
        backtest_mase=1.0,
        metrics={},
    )
    promote(store, version, "test")
    return store


def _snapshot(store: Store) -> dict[str, list[dict[str, object]]]:
    return {view: query(store, f"SELECT * FROM {view} ORDER BY ALL").to_pylist() for view in _VIEWS}


def _files(store: Store) -> dict[str, bytes]:
    tables = store.root / "tables"
    return {str(p.relative_to(tables)): p.read_bytes() for p in tables.rglob("*") if p.is_file()}


def test_compact_reduces_parts_and_keeps_every_result(store: Store) -> None:
    """Guards compaction: each table becomes one part, every view returns the same rows
    (appends still read as full series), and a second run has nothing to do."""
    before = _snapshot(store)
    parts = len(store.part_files("series_versions"))
    assert parts == 9  # 8 ingests + the placeholder
    reports = {r.table: r for r in compact_store(store)}
    assert reports["series_versions"].parts_before == 8
    assert reports["series_versions"].parts_after == 1
    assert reports["ingest_runs"].rows_before == reports["ingest_runs"].rows_after == 8
    for table in ("series_versions", "ingest_runs", "ingest_rejects", "model_events"):
        assert len(store.part_files(table)) == 2, table  # the compacted part + placeholder
    assert _snapshot(store) == before
    again = compact_store(store)
    assert all(r.parts_before == r.parts_after for r in again)
    assert _snapshot(store) == before


def test_dry_run_changes_nothing(store: Store) -> None:
    """Guards --dry-run: it reports what would happen and leaves every file byte-identical."""
    files = _files(store)
    reports = {r.table: r for r in compact_store(store, keep_versions=1, dry_run=True)}
    assert reports["series_versions"].parts_after == 1
    assert reports["series_versions"].versions_dropped == 12 * 8 - 12
    assert _files(store) == files


def test_expiring_superseded_versions(store: Store) -> None:
    """Guards the retention setting: the newest keep_versions stay, older ones go only once
    superseded before the cutoff; the latest version of every series always stays, whole."""
    latest = query(store, "SELECT * EXCLUDE (version) FROM series ORDER BY series_id")
    now = datetime.now(UTC)
    report = compact_table(
        store, "series_versions", older_than=timedelta(days=1), now=now, dry_run=True
    )
    assert report.versions_dropped == 0  # everything was superseded seconds ago
    newest3 = "SELECT * EXCLUDE (version) FROM series_versions {} ORDER BY ALL"
    kept = query(
        store, newest3.format("QUALIFY version > max(version) OVER (PARTITION BY series_id) - 3")
    )
    report = compact_table(store, "series_versions", keep_versions=3)
    assert report.versions_dropped == 12 * 8 - 12 * 3
    counts = query(store, "SELECT DISTINCT count(*) FROM series_versions GROUP BY series_id")
    assert counts.column(0).to_pylist() == [3]
    assert query(store, newest3.format("")) == kept  # the first kept rebuilt whole
    stored = pq.read_table(
        [p for p in store.part_files("series_versions") if p.name.startswith("compact-")][0]
    )
    assert stored.column("base_points").null_count == 12 + 1  # firsts, and s00's edit
    assert query(store, "SELECT * EXCLUDE (version) FROM series ORDER BY series_id") == latest
    later = now + timedelta(days=2)
    report = compact_table(store, "series_versions", older_than=timedelta(days=1), now=later)
    assert report.versions_dropped == 12 * 2
    assert query(store, "SELECT * EXCLUDE (version) FROM series ORDER BY series_id") == latest
    assert query(store, "SELECT max(version) FROM series").column(0).to_pylist() == [1]
    stored = [p for p in store.part_files("series_versions") if p.name != "_empty.parquet"]
    assert len(stored) == 1


def test_refuses_tables_and_values_it_cannot_handle(store: Store) -> None:
    """Guards the allow-list: tables whose parts are replaced by name, or read part by
    part, are refused, as are keep_versions < 1 and negative periods."""
    for table in ("forecast_evaluations", "forecasts", "expert_forecasts", "nope"):
        with pytest.raises(ValueError, match="cannot be compacted"):
            compact_table(store, table)
    with pytest.raises(ValueError, match="keep_versions"):
        compact_table(store, "series_versions", keep_versions=0)
    with pytest.raises(ValueError, match="older_than"):
        compact_table(store, "series_versions", older_than=timedelta(days=-1))
    with pytest.raises(ValueError, match="series_versions only"):
        compact_table(store, "ingest_runs", keep_versions=2)


def test_crash_between_publish_and_delete_reads_each_row_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the reader protocol itself: with the compacted part published and the old
    parts still there (a crash, or a reader listing mid-swap), every reader sees each row
    once; the next compaction removes the leftovers."""
    before = _snapshot(store)
    latest = load_series(store)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # deletes lost
    compact_store(store)
    monkeypatch.undo()
    assert len(store.part_files("series_versions")) == 10  # old 8 + compacted + placeholder
    assert _snapshot(store) == before  # query(): the sandboxed reader
    again = load_series(store)  # Store.connect(): the pipeline's reader
    assert again.series_id == latest.series_id and again.content_hash == latest.content_hash
    reports = {r.table: r for r in compact_store(store)}
    assert reports["series_versions"].parts_before == 9
    assert len(store.part_files("series_versions")) == 2
    assert _snapshot(store) == before


def test_readers_during_compaction_never_fail(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards 'safe under concurrent readers': queries and load_series in a loop while the
    store is compacted again and again always succeed with every row exactly once."""
    unlink, publish = Path.unlink, Store._publish_file

    def slow_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.suffix == ".parquet" and "tables" in self.parts:
            stop.wait(0.02)  # slow deletes, as on object storage
        unlink(self, missing_ok=missing_ok)

    def slow_publish(self: Store, staging: Path, destination: str) -> None:
        publish(self, staging, destination)
        if "/compact-" in destination:
            stop.wait(0.4)  # readers now list the compacted part and all the old ones

    monkeypatch.setattr(Path, "unlink", slow_unlink)
    monkeypatch.setattr(Store, "_publish_file", slow_publish)
    expected = query(store, "SELECT count(*), sum(n_points) FROM series_versions").to_pylist()
    n_series = len(load_series(store))
    errors: list[BaseException] = []
    seen: list[object] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(
                    query(store, "SELECT count(*), sum(n_points) FROM series_versions").to_pylist()
                )
                seen.append(len(load_series(store).series_id))
            except BaseException as error:  # noqa: BLE001 - the test reports any failure
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(4):
            compact_store(store)
            # New small parts that add no rows (an unchanged re-ingest writes a run row only),
            # so the next round has parts to replace again.
            ingest_jsonl(store, _write(tmp_path / f"again{round_}.jsonl", _day(12, 17)))
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:3]
    assert seen and all(item in (expected, n_series) for item in seen)


def test_cli_compact(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """Guards `moe store compact`: dry run and real run report parts and rows; options of
    another action are refused with a one-line error."""
    base = ["--store", str(store.root), "store", "compact"]
    assert main([*base, "--dry-run", "--keep-versions", "2"]) == 0
    out = capsys.readouterr().out
    assert "series_versions: would rewrite 8 part(s) as 1; 96 -> 24 rows, 72 superseded" in out
    assert main([*base, "--table", "ingest_runs"]) == 0
    assert "ingest_runs: rewrote 8 part(s) as 1; 8 -> 8 rows" in capsys.readouterr().out
    assert len(store.part_files("series_versions")) == 9  # only the table asked for
    assert main(["--store", str(store.root), "store", "retain", "--keep-versions", "2"]) == 2
    assert "options of `moe store compact`" in capsys.readouterr().err


@pytest.mark.parametrize("reader", ["query", "load_series"])
def test_reader_outlasts_a_writer_deleting_listed_parts_for_a_second(
    store: Store, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    """Guards the re-list backoff: while a writer keeps deleting parts (here: every read
    before one simulated second finds a listed part gone), a reader waits and lists again
    instead of failing after a burst of immediate retries (CI failure on a loaded machine).
    The clock advances only by the reader's pauses, so the test is deterministic."""
    import duckdb

    import storage.series
    import storage.sql

    clock = {"now": 0.0, "attempts": 0}
    monkeypatch.setattr(
        storage.sql.time, "sleep", lambda s: clock.__setitem__("now", clock["now"] + s)
    )
    real_connection = storage.sql.readonly_connection

    def vanishing(store_: Store) -> duckdb.DuckDBPyConnection:
        clock["attempts"] += 1
        if clock["now"] < 1.0:
            raise duckdb.IOException('No files found that match the pattern "x.parquet"')
        return real_connection(store_)

    monkeypatch.setattr(storage.sql, "readonly_connection", vanishing)
    monkeypatch.setattr(storage.series, "readonly_connection", vanishing, raising=False)
    if reader == "query":
        assert query(store, "SELECT count(*) AS n FROM series").column("n")[0].as_py() > 0
    else:
        original = storage.series._read_latest

        def read_latest(store_: Store, ids: object) -> object:
            vanishing(store_).close()  # the same simulated writer in front of the real read
            return original(store_, ids)  # type: ignore[arg-type]

        monkeypatch.setattr(storage.series, "_read_latest", read_latest)
        assert len(load_series(store).series_id) > 0
    assert 1.0 <= clock["now"] < 3.0 and clock["attempts"] >= 7
