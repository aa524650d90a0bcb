"""moe sql is read-only, binds parameters, and readers never block on writers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from storage import Store, ingest_jsonl
from storage.sql import ReadOnlyViolation, query, readonly_connection

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def filled(store: Store, tmp_path: Path) -> Store:
    path = tmp_path / "d.jsonl"
    path.write_text('{"series_id": "a", "sequence": [1, 2]}\n{"series_id": "b", "sequence": [3]}\n')
    ingest_jsonl(store, path)
    return store


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO series_versions SELECT * FROM series_versions",
        "COPY (SELECT * FROM series) TO '/tmp/leak.csv'",
        "ATTACH '/tmp/other.duckdb' AS other",
        "SET enable_external_access = true",
        "PRAGMA version",
        "SELECT 1; SELECT 2",
    ],
)
def test_non_select_statements_are_refused(filled: Store, statement: str) -> None:
    """Writes, COPY, ATTACH, settings and multi-statements raise ReadOnlyViolation."""
    with pytest.raises(ReadOnlyViolation):
        query(filled, statement)


def test_file_reads_outside_the_store_are_refused(filled: Store, tmp_path: Path) -> None:
    """A table function reading an arbitrary file inside a SELECT is refused."""
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(ReadOnlyViolation, match="read_csv"):
        query(filled, f"SELECT * FROM read_csv('{secret}')")
    connection = readonly_connection(filled)  # the sandbox alone refuses it too
    try:
        with pytest.raises(duckdb.PermissionException):
            connection.sql(f"SELECT * FROM read_csv('{secret}')").fetchall()
    finally:
        connection.close()


def test_parameters_are_bound(filled: Store) -> None:
    """Values go in as bound parameters; an injection attempt is just a non-matching string."""
    rows = query(filled, "SELECT series_id FROM series WHERE series_id = $1", ["a"]).to_pylist()
    assert rows == [{"series_id": "a"}]
    hostile = "a' OR '1'='1"
    assert query(filled, "SELECT * FROM series WHERE series_id = $1", [hostile]).num_rows == 0


def test_catalog_file_opens_read_only_while_ingesting(filled: Store, tmp_path: Path) -> None:
    """Analysts can hold catalog.duckdb open read-only while the pipeline ingests."""
    analyst = duckdb.connect(str(filled.catalog_path), read_only=True)
    try:
        before = analyst.execute("SELECT count(*) FROM series").fetchone()
        path = tmp_path / "more.jsonl"
        path.write_text('{"series_id": "c", "sequence": [5]}\n')
        ingest_jsonl(filled, path)  # writes Parquet parts; never opens the catalog
        after = analyst.execute("SELECT count(*) FROM series").fetchone()
    finally:
        analyst.close()
    assert (before, after) == ((2,), (3,))


def test_cli_sql_and_ingest(tmp_path: Path) -> None:
    """`moe ingest` prints the line accounting; `moe sql` prints rows and refuses writes."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"sequence": [1, 2]}\n\n{"sequence": "x"}\n')
    base = [sys.executable, "-m", "cli", "--store", str(tmp_path / "s")]
    ingest = subprocess.run([*base, "ingest", str(data)], cwd=REPO, capture_output=True, text=True)
    assert ingest.returncode == 0, ingest.stderr
    assert "3 lines read = 1 blank + 1 accepted + 1 rejected" in ingest.stdout
    assert f"rejected {data}:3: field 'sequence'" in ingest.stdout
    sql = subprocess.run(
        [*base, "sql", "SELECT count(*) AS n FROM series WHERE n_points = $1", "--param", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert sql.returncode == 0 and "(1 rows)" in sql.stdout
    refused = subprocess.run(
        [*base, "sql", "DROP VIEW series"], cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "only SELECT" in refused.stderr
    missing = subprocess.run(
        [*base, "ingest", str(tmp_path / "no.jsonl")], cwd=REPO, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr
