"""Series versions that only add points are stored as those points (storage.versions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import Store, ingest_jsonl
from storage.schemas import TABLE_SCHEMAS
from storage.series import load_series
from storage.sql import query


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _stored(store: Store) -> list[dict[str, object]]:
    """Every stored series_versions row as written (appends hold only their new points)."""
    rows: list[dict[str, object]] = []
    for part in store.part_files("series_versions"):
        rows += pq.read_table(part).to_pylist()
    return rows


def _same(a: list[float | None], b: list[float | None]) -> bool:
    """Equal lists, a missing value (None or NaN) matching a missing value."""

    def missing(x: float | None) -> bool:
        return x is None or math.isnan(x)

    return len(a) == len(b) and all(
        (missing(x) and missing(y)) or x == y for x, y in zip(a, b, strict=True)
    )


def _series(n: int, length: int, extra: int = 0) -> list[dict[str, object]]:
    return [
        {
            "series_id": f"s{i}",
            "sequence": [float(i * 100 + t) if t % 7 != 3 else None for t in range(length + extra)],
            "start": "2026-01-01",
            "freq": "D",
        }
        for i in range(n)
    ]


def test_append_stores_only_the_new_points(tmp_path: Path) -> None:
    """Guards item 6: a daily append of one point stores one value, not a full copy, and
    every reader (series view, series_versions, load_series) still gets the full series."""
    store = Store.open(tmp_path / "store")
    ingest_jsonl(store, _write(tmp_path / "day0.jsonl", _series(10, 20)))
    for day in (1, 2):
        report = ingest_jsonl(store, _write(tmp_path / f"day{day}.jsonl", _series(10, 20, day)))
        assert report.new_versions == 10 and report.new_series == 0
    stored = _stored(store)
    assert sum(len(row["values"]) for row in stored) == 10 * 20 + 10 + 10  # not 3 copies
    appends = [row for row in stored if row["base_hash"] is not None]
    assert len(appends) == 20 and {row["base_points"] for row in appends} == {20, 21}
    expected = {row["series_id"]: row["sequence"] for row in _series(10, 20, 2)}
    latest = query(store, "SELECT series_id, values, n_points, n_missing, version FROM series")
    assert latest.num_rows == 10
    for row in latest.to_pylist():
        assert _same(row["values"], expected[row["series_id"]])
        assert row["n_points"] == 22 and row["version"] == 3
        assert row["n_missing"] == sum(v is None for v in expected[row["series_id"]])
    loaded = load_series(store)
    for series_id, values in zip(loaded.series_id, loaded.values, strict=True):
        assert _same(values.tolist(), expected[series_id])
    history = query(store, "SELECT version, values FROM series_versions WHERE series_id = 's3'")
    by_version = {row["version"]: row["values"] for row in history.to_pylist()}
    for version, extra in ((1, 0), (2, 1), (3, 2)):
        assert _same(by_version[version], _series(10, 20, extra)[3]["sequence"])  # type: ignore[arg-type]
    assert "base_hash" not in history.column_names + latest.column_names


def test_changes_that_are_not_appends_store_full_versions(tmp_path: Path) -> None:
    """Guards the append test: an edited value, a shorter series, another start or freq,
    is stored in full; an identical re-ingest of an appended series adds nothing."""
    store = Store.open(tmp_path / "store")
    base = [
        {"series_id": name, "sequence": [1.0, 2.0, 3.0], "start": "2026-01-01", "freq": "D"}
        for name in ("edit", "short", "start", "freq", "grow")
    ]
    ingest_jsonl(store, _write(tmp_path / "a.jsonl", base))
    changed = [
        {"series_id": "edit", "sequence": [1.0, 9.0, 3.0, 4.0], "start": "2026-01-01", "freq": "D"},
        {"series_id": "short", "sequence": [1.0, 2.0], "start": "2026-01-01", "freq": "D"},
        {
            "series_id": "start",
            "sequence": [1.0, 2.0, 3.0, 4.0],
            "start": "2026-01-02",
            "freq": "D",
        },
        {"series_id": "freq", "sequence": [1.0, 2.0, 3.0, 4.0], "start": "2026-01-01", "freq": "h"},
        {"series_id": "grow", "sequence": [1.0, 2.0, 3.0, 4.0], "start": "2026-01-01", "freq": "D"},
    ]
    ingest_jsonl(store, _write(tmp_path / "b.jsonl", changed))
    kinds = {
        row["series_id"]: row["base_points"]
        for row in _stored(store)
        if str(row["source_file"]).endswith("b.jsonl")
    }
    assert kinds == {"edit": None, "short": None, "start": None, "freq": None, "grow": 3}
    latest = {
        row["series_id"]: row
        for row in query(store, "SELECT series_id, values, start, freq FROM series").to_pylist()
    }
    for row in changed:
        assert latest[str(row["series_id"])]["values"] == row["sequence"]
    again = ingest_jsonl(store, _write(tmp_path / "c.jsonl", changed))
    assert again.unchanged == 5 and again.new_versions == 0  # dedupe on the full content


def test_store_of_full_versions_reads_as_before(tmp_path: Path) -> None:
    """Guards old stores: parts written before appends existed (no base columns, an old
    placeholder) read through `moe sql` exactly as the previous views returned them."""
    store = Store.open(tmp_path / "store")
    ingest_jsonl(store, _write(tmp_path / "a.jsonl", _series(6, 9)))
    ingest_jsonl(store, _write(tmp_path / "b.jsonl", [{"series_id": "s1", "sequence": [5.0]}]))
    old_schema = pa.schema(
        [f for f in TABLE_SCHEMAS["series_versions"] if f.name not in ("base_hash", "base_points")]
    )
    # As the previous version wrote them, its placeholder (_empty.parquet) included.
    for part in store.part_files("series_versions"):
        pq.write_table(pq.read_table(part).select(old_schema.names).cast(old_schema), part)
    (store.root / "catalog.version").write_text("an older layout")
    old_views = {
        "series_versions": """SELECT * EXCLUDE (ingested_at), ingested_at,
               row_number() OVER (PARTITION BY series_id
                                  ORDER BY ingested_at, ingest_id, source_line) AS version
            FROM read_parquet($1, union_by_name=true)""",
    }
    old_views["series"] = f"""SELECT * FROM ({old_views["series_versions"]})
        QUALIFY version = max(version) OVER (PARTITION BY series_id)"""
    files = [str(p) for p in store.part_files("series_versions")]
    reader = Store.open_existing(store.root)  # read-only: the placeholder stays old
    for view, old_sql in old_views.items():
        with duckdb.connect() as connection:
            before = connection.sql(f"{old_sql} ORDER BY ALL", params=[files]).to_arrow_table()
        now = query(reader, f"SELECT * FROM {view} ORDER BY ALL")
        assert now.column_names == before.column_names
        assert now.to_pylist() == before.to_pylist()


@pytest.mark.parametrize("chunk_lines", [1, 1000])
def test_append_then_edit_then_append(tmp_path: Path, chunk_lines: int) -> None:
    """Guards chains: append, full edit, append again each read back exactly, with any
    chunk size (the append decision is per line, not per chunk)."""
    store = Store.open(tmp_path / "store")
    steps = [[1.0, 2.0], [1.0, 2.0, None], [7.0, 2.0, None], [7.0, 2.0, None, 4.0, 5.0]]
    for index, values in enumerate(steps):
        rows = [
            {"series_id": "x", "sequence": values},
            {"series_id": f"other{index}", "sequence": [1.0]},
        ]
        ingest_jsonl(store, _write(tmp_path / f"{index}.jsonl", rows), chunk_lines=chunk_lines)
    history = query(
        store, "SELECT values FROM series_versions WHERE series_id = 'x' ORDER BY version"
    )
    assert history.column("values").to_pylist() == steps
    stored = sorted(
        (row["ingested_at"], row["base_points"], len(row["values"]))
        for row in _stored(store)
        if row["series_id"] == "x"
    )
    assert [(points, n) for _, points, n in stored] == [(None, 2), (2, 1), (None, 3), (3, 2)]
